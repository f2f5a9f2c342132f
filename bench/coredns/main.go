// Command coredns is upstream CoreDNS with its default plugin set, built from the pinned module.
package main

import (
	_ "github.com/coredns/coredns/core/plugin"
	"github.com/coredns/coredns/coremain"
)

func main() {
	coremain.Run()
}

// Command etcd is the upstream etcd server, built from the pinned etcd module.
package main

import (
	"os"

	"svcplane.dev/tests/controlplane/lifeline"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	lifeline.Watch()
	etcdmain.Main(os.Args)
}

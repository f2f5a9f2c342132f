// Command kube-proxy is the upstream node proxy, built from the pinned Kubernetes module. Tests
// and benchmarks run it in nftables mode inside network namespaces, as the peer that
// svcplane-proxy is compared against.
package main

import (
	"os"

	"svcplane.dev/tests/controlplane/lifeline"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	"k8s.io/kubernetes/cmd/kube-proxy/app"
)

func main() {
	lifeline.Watch()
	os.Exit(cli.Run(app.NewProxyCommand()))
}

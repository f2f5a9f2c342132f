// Command kube-controller-manager is the upstream controller manager, built from the pinned
// Kubernetes module. Tests and benchmarks run only its endpoint controllers, as the peer that
// svcplane-endpoints is compared against.
package main

import (
	"os"

	"svcplane.dev/tests/controlplane/lifeline"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	lifeline.Watch()
	os.Exit(cli.Run(app.NewControllerManagerCommand()))
}

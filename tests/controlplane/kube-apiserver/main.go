// Command kube-apiserver is the upstream API server, built from the pinned Kubernetes module.
package main

import (
	"os"

	"svcplane.dev/tests/controlplane/lifeline"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	lifeline.Watch()
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}

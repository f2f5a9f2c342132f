// Package lifeline ends a control-plane process when the process that started it goes away.
//
// With SVCPLANE_LIFELINE=stdin the parent holds the write end of our stdin. The kernel closes it
// however the parent ends, SIGKILL included, so EOF on stdin means nobody is left to stop us, or
// the parent asks us to stop. Either way we exit at once: test data is thrown away, and a
// graceful shutdown (etcd draining clients, kube-apiserver its shutdown sequence) takes seconds
// that only slow every test's teardown. This is what keeps a killed test run from leaving etcd
// or kube-apiserver behind.
package lifeline

import (
	"fmt"
	"io"
	"os"
)

// Watch starts watching stdin when SVCPLANE_LIFELINE=stdin; otherwise it does nothing.
func Watch() {
	if os.Getenv("SVCPLANE_LIFELINE") != "stdin" {
		return
	}
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		fmt.Fprintln(os.Stderr, "lifeline: stdin closed, parent gone or stopping us; exiting")
		os.Exit(0)
	}()
}

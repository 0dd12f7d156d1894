// The pod sandbox's "pause" process, in Go instead of Kubernetes' C
// build/pause: PID 1 of the pod's namespaces that holds them open, reaps
// zombies and exits on SIGINT/SIGTERM. Built static (CGO off), it is the only
// file of the locally made pause image (see build.sh).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

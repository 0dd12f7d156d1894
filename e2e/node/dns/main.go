// The local node's cluster DNS: CoreDNS (coremain, as its own main does)
// with only the plugins the node's Corefile uses (testkit/src/node.rs), so
// the build compiles the Kubernetes client and not CoreDNS's cloud
// providers' SDKs (route53, azure, clouddns), which took most of the time of
// a full build. Plugins register themselves in their init functions.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}

// Command coredns is upstream's main with only the plugins the node's Corefile uses
// (tests/cluster/node.py): upstream's imports every plugin, and the cloud ones (route53,
// azure, clouddns), dnstap, geoip and trace were most of its build time.
package main

import (
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}

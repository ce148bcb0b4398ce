// Command etcd is upstream's go.etcd.io/etcd/server/v3 main; the release's own
// go.mod replaces its sibling modules with relative paths, so `go install` of it fails.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}

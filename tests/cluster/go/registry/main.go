// Command registry is upstream's cmd/registry with only the filesystem storage driver, the one
// the node's registry uses: the cloud drivers (Azure, GCS, S3) and the pull-through proxy were
// most of its build time.
package main

import (
	"github.com/distribution/distribution/v3/registry"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

func main() {
	// Upstream's main ignores it too: the commands exit non-zero themselves on failure.
	_ = registry.RootCmd.Execute()
}

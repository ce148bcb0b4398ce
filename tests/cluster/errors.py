"""The one exception type the cluster tool raises for problems a user can act on."""


class ClusterError(RuntimeError):
    """Building, starting, reaching or stopping a test cluster failed."""

"""The Ray side of the driver: the local cluster, the actor pool, dispatch and worker reuse."""

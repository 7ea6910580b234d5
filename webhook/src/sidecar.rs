//! Pure builders for what gets added to a pod: the `holysheep-sidecar` container (native or
//! plain), its volumes, and the env given to app containers.

"""The networks and the deployable bundle: the model registry, the ensemble network, and the bundle format (card,
weights and their checksums) with its loader."""

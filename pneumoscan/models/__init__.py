"""The networks and the deployable bundle: the model registry, the ensemble network, and the bundle format (card,
weights and their checksums) with its loader."""


class WeightsUnavailable(OSError):
    """Pretrained weights that can be neither read from the local cache nor downloaded: the CLI exits with status 3
    for it alone, so a script (``make reference``) can train that run from scratch instead, under another name.
    Here, free of torch, so that the CLI catches it without loading torch."""

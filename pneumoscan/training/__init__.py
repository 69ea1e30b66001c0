"""Making bundles: the training engine and its callbacks, the training run, experiment tracking, cross-validation,
and the bundle-making steps that need evaluation (the ensemble builder, the INT8 model)."""

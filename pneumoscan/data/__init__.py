"""From files to model input: dataset layouts and manifests, image readers and decoding, preprocessing and its cache,
patient-grouped splits, the audit, augmentation, the tasks (which labels are the classes) and scope checks."""

"""Helpers every layer uses and that import nothing else of pneumoscan: atomic file writes, figures as files, logging,
option look-up, file names in messages, and the metrics (AUC, thresholds, calibration)."""

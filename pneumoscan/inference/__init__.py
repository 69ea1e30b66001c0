"""Scoring films with a bundle: the Predictor and its backends (PyTorch, ONNX, INT8 ONNX), Grad-CAM explanations and
the ONNX export."""

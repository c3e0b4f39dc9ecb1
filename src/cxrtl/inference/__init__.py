"""Inference: the Predictor over torch or onnxruntime backends, and ONNX export."""

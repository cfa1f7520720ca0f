"""Model code: architectures, weights, serving wrappers and the torch -> ONNX export pipeline."""

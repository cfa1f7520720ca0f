"""File names inside a model folder and its version folders (Triton-style repository)."""

CONFIG_FILE = "config.yaml"  # the model's ModelConfig, next to its version folders
EXPORT_RECORD = "export.json"  # what produced a version: weights, parity figures, library versions
ONNX_ARTIFACT = "model.onnx"  # the graph ONNX Runtime serves unless the config names another
WEIGHTS_ARTIFACT = "weights.pt"  # state_dict for the torch backend (rebuilt from `architecture`)
BACKBONE_ARTIFACT = "backbone.onnx"  # Mask R-CNN split path, ONNX: images -> FPN features
WHOLE_GRAPH_ARTIFACT = "model_full.onnx"  # Mask R-CNN whole-graph path, batch 1
VIDEO_DIR = "video"  # inside a version folder: one sub-folder per video split part

"""Video: chunks of frames through a model's pipeline, with per-stream keyframe state (runs.py),
keyframe feature reuse for semantic models (semantic.py), every frame for instance models
(instance.py)."""

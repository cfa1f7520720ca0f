"""Accuracy evaluation: PA / MPA / mIoU for semantic models, COCO mask AP for instance models,
computed on an engine in-process or through a running server over HTTP (`segserve eval`)."""

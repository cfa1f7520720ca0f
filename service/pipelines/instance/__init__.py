"""Instance segmentation (Mask R-CNN), split for batched serving.

The serving pipeline's calls, in order (``runner.SplitRunner`` composes them as
prepare / run_batch / finish, the request / engine-thread / request split of the batcher;
the pure functions come from ``codecs.rcnn_input`` and ``codecs.box_masks``):

    resized, meta = preprocess(image_rgb_hwc_uint8, min_size, max_size, canvas, canvas_dtype)
    batch = collate(resized_list, metas)    # {"images": (B, 3, H, W) float32|uint8, "image_sizes": (B, 2) int32}
    features = backbone_engine.infer(batch) # backbone.onnx or the torch backend
    detections = heads(features, [m.resized_size for m in metas], batch["images"].shape[-2:])
    instances = to_instances(detections[i], metas[i], score_threshold, max_instances, mask_threshold)
"""

"""Mask R-CNN on the build side: export, parity with torchvision eager, random
initialisation and benchmarks. What serves a request lives in segserve.pipelines.instance."""

"""The nn.Modules both the exporter and the torch engine build: the exact graphs every
backend runs (serving wrappers, the architecture registry, the Mask R-CNN split)."""

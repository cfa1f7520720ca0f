"""gRPC transport: the KServe v2 / Open Inference Protocol (Triton's gRPC API), so
tritonclient.grpc and other KServe v2 clients can call segserve. See docs/grpc.md."""

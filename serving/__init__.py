"""Serving layer: Triton model repository builder, python-backend models, server control and the gRPC client."""

"""The gRPC API's generated Python stubs (``generate_pb2``: messages; ``generate_pb2_grpc``: the ``Generation``
service), from ``proto/jllm/v1/generate.proto`` by ``scripts/generate_grpc_stubs.py``: never edited by hand.

Where this module sits: docs/architecture.md.
"""

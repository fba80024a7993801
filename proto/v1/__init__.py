"""Generated stubs for pseudostream.v1 (do not edit; run ``python -m pseudostream.proto.gen``)."""

from pseudostream.proto.v1 import labeler_pb2, labeler_pb2_grpc

__all__ = ["labeler_pb2", "labeler_pb2_grpc"]

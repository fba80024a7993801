"""pseudostream.proto.v1"""

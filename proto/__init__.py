"""pseudostream.proto"""

"""pseudostream.server.labellog"""

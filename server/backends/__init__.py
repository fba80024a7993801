"""pseudostream.server.backends"""

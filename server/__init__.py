"""pseudostream.server"""

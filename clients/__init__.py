"""pseudostream.clients"""

"""pseudostream.models"""

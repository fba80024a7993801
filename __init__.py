"""pseudostream: an inference service for online pseudo-labeling.

The import package maps the repository's top-level folders: ``pseudostream.server`` (the labeling
service), ``pseudostream.models`` (teachers), ``pseudostream.clients`` (client, CLI, trainer
dataset) and ``pseudostream.proto`` (the wire contract).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]

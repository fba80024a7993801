"""The wire contract: ``pseudostream/v1/labeler.proto`` and its generated stubs (``v1``)."""

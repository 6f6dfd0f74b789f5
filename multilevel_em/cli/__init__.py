"""The ``mlem`` command line."""

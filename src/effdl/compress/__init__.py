"""Compression techniques (importing registers them)."""
from . import prune, quantize  # noqa: F401

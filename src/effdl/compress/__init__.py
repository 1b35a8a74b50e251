"""Compression techniques (importing registers them)."""
from . import lowrank, prune, quantize, share  # noqa: F401

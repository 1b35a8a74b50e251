"""Pruning techniques."""
from .magnitude import MagnitudeConfig, prune_to

Magnitude = MagnitudeConfig
__all__ = ["Magnitude", "MagnitudeConfig", "prune_to"]

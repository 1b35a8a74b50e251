"""Quantization techniques (importing registers them)."""
from .ptq import PTQConfig, QuantizedModel

PTQ = PTQConfig
__all__ = ["PTQ", "PTQConfig", "QuantizedModel"]

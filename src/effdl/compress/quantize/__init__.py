"""Quantization techniques (importing registers them)."""
from . import ptq  # noqa: F401  (registers quantize.ptq)
from .ptq import PTQConfig, QuantizedModel  # noqa: F401

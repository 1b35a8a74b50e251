"""Quantization techniques (importing registers them)."""
from .float_formats import FloatFormatConfig, FloatFormatModel
from .ptq import PTQConfig, QuantizedModel
from .weight_only import WeightOnlyConfig, WeightOnlyModel

PTQ = PTQConfig
Weights = WeightOnlyConfig
Float = FloatFormatConfig
__all__ = ["Float", "FloatFormatConfig", "FloatFormatModel", "PTQ", "PTQConfig", "QuantizedModel", "WeightOnlyConfig",
           "WeightOnlyModel", "Weights"]

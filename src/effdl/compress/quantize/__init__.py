"""Quantization techniques (importing registers them)."""
from .awq import AWQConfig, AWQModel
from .binary import BinaryConfig, ExtremeQuantModel, TernaryConfig
from .float_formats import FloatFormatConfig, FloatFormatModel
from .gptq import GPTQConfig
from .mixed import MixedConfig, MixedPrecisionModel
from .ptq import PTQConfig, QuantizedModel
from .qat import QATConfig
from .weight_only import WeightOnlyConfig, WeightOnlyModel

PTQ = PTQConfig
Weights = WeightOnlyConfig
Float = FloatFormatConfig
QAT = QATConfig
Binary = BinaryConfig
Ternary = TernaryConfig
Mixed = MixedConfig
GPTQ = GPTQConfig
AWQ = AWQConfig
__all__ = ["AWQ", "AWQConfig", "AWQModel", "Binary", "BinaryConfig", "ExtremeQuantModel", "Float", "FloatFormatConfig",
           "FloatFormatModel", "GPTQ", "GPTQConfig", "Mixed", "MixedConfig", "MixedPrecisionModel", "PTQ", "PTQConfig", "QAT",
           "QATConfig", "QuantizedModel", "Ternary", "TernaryConfig", "WeightOnlyConfig", "WeightOnlyModel", "Weights"]

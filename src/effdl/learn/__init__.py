"""Learning techniques (importing registers them)."""
from .distill import DistillConfig, distillation_loss

Distill = DistillConfig
__all__ = ["Distill", "DistillConfig", "distillation_loss"]

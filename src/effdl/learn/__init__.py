"""Learning techniques (importing registers them): distillation (logits, hints, attention transfer),
augmentation, self-supervised pre-training.

Students of a given size come from the zoo's knobs, e.g.
``effdl.zoo.build("lenet5", input_shape=..., num_classes=..., width=0.25)`` or ``resnet`` with
``depth=``; there is no separate student builder.
"""
from .augment import (
    AugmentConfig,
    cutmix,
    cutout,
    mixup,
    random_shift,
    smooth_targets,
    soft_cross_entropy,
)
from .distill import DistillConfig, distill_with, distillation_loss
from .hint import HintConfig, attention_loss, attention_map, hint_distill, make_adapter
from .selfsup import SimCLRConfig, nt_xent

Distill = DistillConfig
Hint = HintConfig
Augment = AugmentConfig
SimCLR = SimCLRConfig
__all__ = [
    "Augment", "AugmentConfig", "Distill", "DistillConfig", "Hint", "HintConfig", "SimCLR", "SimCLRConfig",
    "attention_loss", "attention_map", "cutmix", "cutout", "distill_with", "distillation_loss", "hint_distill",
    "make_adapter", "mixup", "nt_xent", "random_shift", "smooth_targets", "soft_cross_entropy",
]

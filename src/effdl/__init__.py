"""effdl: make deep-learning models smaller, faster and better, with measured Pareto frontiers.

The public API is small: a Task, technique configs, ``apply``, ``Recipe``, ``measure``,
``optimize`` and ``report``.
"""
__version__ = "0.1.0"

from .core.errors import (  # noqa: E402
    ArtifactError, ConfigError, DataError, EffdlError, ModelError, NumericalMismatchError,
    UnsafeArtifactError, UnsupportedModuleError,
)
from .core.registry import apply, techniques  # noqa: E402
from .core.task import MetricSpec, Task, TrainHook  # noqa: E402
from .core.tasks import Classification, ImageClassification  # noqa: E402
from .compress import lowrank, prune, quantize, share  # noqa: E402
from . import learn  # noqa: E402
from .data import load_data  # noqa: E402
from .metrics.measure import Tolerances, measure  # noqa: E402
from .pipeline.optimize import optimize  # noqa: E402
from .pipeline.results import Goal, MeasureSettings, Provenance, Results  # noqa: E402
from .pipeline.recipe import Recipe, apply_recipe  # noqa: E402
from .report import write_report as report  # noqa: E402
from . import zoo  # noqa: E402

__all__ = [
    "ArtifactError", "Classification", "ConfigError", "DataError", "EffdlError", "ImageClassification", "MetricSpec",
    "ModelError", "TrainHook",
    "NumericalMismatchError", "Recipe", "Task", "Tolerances", "UnsafeArtifactError",
    "UnsupportedModuleError", "apply", "apply_recipe", "learn", "load_data", "measure", "optimize",
    "lowrank", "prune", "quantize", "report", "share", "techniques", "zoo",
    "Goal", "MeasureSettings", "Provenance", "Results",
]

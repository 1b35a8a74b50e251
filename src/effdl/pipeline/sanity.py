"""Is the baseline a working model of its data? Checked before anything is built from it.

A model that scores no better than a predictor ignoring its input, or far below a linear probe on
the same inputs, was almost always trained on differently prepared inputs (another normalization,
channel order or tokenizer) or loaded with the wrong weights. Compressing it is worse than useless:
fine-tuning and distillation "recover" the candidates on effdl's data and report gains over a
baseline that was never right. So the run stops, naming how effdl prepared the data and how to
match the model's own preprocessing.
"""
from __future__ import annotations

from ..core.errors import BaselineError
from ..core.task import QualityReference, Task
from .results import Goal

#: a baseline must be this many standard errors above chance
CHANCE_SIGMAS = 3.0
#: and must keep at least this share of a linear probe's gain over chance
PROBE_SHARE = 0.5


def baseline_problem(ref: QualityReference, value: float, higher_is_better: bool) -> str | None:
    """Why ``value`` (the baseline's validation quality) is not credible against ``ref``, or None."""
    if not higher_is_better:
        return None if value < ref.chance else f"no better than {ref.chance_what} ({ref.chance:.4g})"
    if value - ref.chance < CHANCE_SIGMAS * ref.noise:
        return (f"within {CHANCE_SIGMAS:g} standard errors ({CHANCE_SIGMAS * ref.noise:.3g}) of {ref.chance_what} "
                f"({ref.chance:.4g})")
    if ref.probe is not None and value < ref.chance + PROBE_SHARE * (ref.probe - ref.chance):
        return f"far below {ref.probe_what} ({ref.probe:.4g}; chance {ref.chance:.4g})"
    return None


def _preparation(data: str | None) -> str:
    from ..data import TEXT_PREPROCESSING
    from ..data.bundled import PREPROCESSING

    if data in PREPROCESSING:
        base = data.removesuffix("-raw")
        other = f"{base}-raw" if data == base else base
        return (f"effdl prepared {data!r} as: {PREPROCESSING[data]}. If the model was trained on "
                f"{PREPROCESSING[other]}, use --data {other}; if on something else, give the data as "
                "path/to/file.py:factory returning the inputs exactly as the model was trained on them.")
    if data in TEXT_PREPROCESSING:
        return (f"effdl prepared {data!r} as: {TEXT_PREPROCESSING[data]}, tokenized with the model's own tokenizer; "
                "check the model and its tokenizer belong together and suit this data.")
    return ("effdl feeds the data unchanged: check it is prepared exactly as the model's training inputs were, "
            "and that the weights are the trained ones.")


def check_baseline(task: Task, goal: Goal, data: str | None = None) -> None:
    """Raise BaselineError when the task's model is not a working model of the task's data: its
    validation quality in the task's primary metric is no better than the task's reference (chance,
    or half a linear probe's gain over chance). Other metrics are not checked."""
    if goal.metric != task.metric.name:
        return
    ref = task.reference_quality("val")
    if ref is None:
        return
    value = task.evaluate(task.model, "val")[goal.metric]
    problem = baseline_problem(ref, value, task.metric.higher_is_better)
    if problem is None:
        return
    raise BaselineError(
        f"the model's validation {goal.metric} is {value:.4g}, {problem}: it is not a working model of this data, "
        f"so no compressed candidate measured against it would mean anything. {_preparation(data)} To compress "
        "it anyway, pass --allow-weak-baseline (Python: optimize(..., check_baseline=False)).")

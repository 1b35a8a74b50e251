"""Technique registry keyed by config type (and by dotted name for recipes).

Adding a technique = a TechniqueConfig subclass + an apply function decorated with ``register``;
no central if/elif anywhere.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn

from .config import TechniqueConfig
from .errors import ConfigError, suggest

NEEDS = ("nothing", "calibration", "training")
#: model kinds a technique may claim (``register(..., models=...)``); the conformance suite
#: (``effdl.testing``) runs every technique on a tiny real model of each kind it claims
MODEL_KINDS = ("cnn", "mlp", "encoder", "decoder")


@dataclass(frozen=True)
class Technique:
    name: str
    config: type[TechniqueConfig]
    fn: Callable[..., nn.Module]
    needs: str | Callable[[TechniqueConfig], str]
    summary: str
    #: task kinds (core.task.TASK_KINDS) the technique works with; None: any task
    tasks: tuple[str, ...] | None = None
    #: model kinds (MODEL_KINDS) the technique is known to work on (checked by effdl.testing)
    models: tuple[str, ...] = ("cnn", "mlp")
    #: a cheap config for tests (a few steps, not the default's epochs); None: the default config
    example: Callable[[], TechniqueConfig] | None = None
    #: whether it takes an already-quantized model (CompressedModel); False: it must refuse one
    takes_quantized: bool = False

    def example_config(self) -> TechniqueConfig:
        """The declared cheap example config, else the default config."""
        cfg = self.example() if self.example is not None else self.config()
        if type(cfg) is not self.config:
            raise ConfigError(f"{self.name}'s example gives a {type(cfg).__name__}, not a {self.config.__name__}")
        return cfg

    def needs_for(self, config: TechniqueConfig) -> str:
        """What this config needs; techniques whose data needs depend on a field pass a callable."""
        return self.needs(config) if callable(self.needs) else self.needs


_BY_NAME: dict[str, Technique] = {}
_BY_TYPE: dict[type, Technique] = {}


def register(name: str, config: type[TechniqueConfig], needs="nothing", tasks: tuple[str, ...] | None = None,
             models: tuple[str, ...] = ("cnn", "mlp"), example: Callable[[], TechniqueConfig] | None = None,
             takes_quantized: bool = False):
    """Decorator: ``@register("prune.magnitude", MagnitudeConfig, needs="training")``.

    ``needs`` is one of NEEDS or a function config -> one of NEEDS; ``tasks`` the task kinds the
    technique works with (None: any); ``models`` the model kinds (MODEL_KINDS) it claims to work
    on; ``example`` a function returning a cheap config for tests; ``takes_quantized`` whether it
    accepts an already-quantized model (otherwise it must refuse one with a ConfigError).
    """
    from .task import TASK_KINDS

    if not callable(needs) and needs not in NEEDS:
        raise ConfigError(f"needs must be one of {NEEDS}, got {needs!r}")
    if tasks is not None and not set(tasks) <= set(TASK_KINDS):
        raise ConfigError(f"tasks must be kinds among {TASK_KINDS}, got {tasks!r}")
    if isinstance(models, str) or not set(models) <= set(MODEL_KINDS):
        raise ConfigError(f"models must be a tuple of kinds among {MODEL_KINDS}, got {models!r}")
    if example is not None and not callable(example):
        raise ConfigError(f"example must be a function returning a {config.__name__}, got {example!r}")

    def deco(fn):
        if name in _BY_NAME and _BY_NAME[name].fn is not fn:
            raise ConfigError(f"technique {name!r} is already registered")
        config.technique = name
        tech = Technique(name, config, fn, needs, (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "",
                         tuple(tasks) if tasks is not None else None, tuple(models), example, bool(takes_quantized))
        _BY_NAME[name] = tech
        _BY_TYPE[config] = tech
        return fn

    return deco


def _load_builtins() -> None:
    # Importing the families registers them; kept lazy so `core` has no upward imports.
    from .. import compress, learn  # noqa: F401


def techniques() -> dict[str, Technique]:
    _load_builtins()
    return dict(sorted(_BY_NAME.items()))


def get(name: str) -> Technique:
    _load_builtins()
    if name not in _BY_NAME:
        raise ConfigError(
            f"unknown technique {name!r}.{suggest(name, _BY_NAME)} Run `effdl techniques` for the list."
        )
    return _BY_NAME[name]


def for_config(config: TechniqueConfig) -> Technique:
    _load_builtins()
    tech = _BY_TYPE.get(type(config))
    if tech is None:
        raise ConfigError(
            f"{type(config).__name__} is not a registered technique config; register it with "
            "effdl.core.registry.register(name, ConfigClass)."
        )
    return tech


def config_from_dict(data: dict[str, Any]) -> TechniqueConfig:
    """Rebuild a config from ``{'technique': name, ...}`` — only registered classes (allow-list)."""
    if not isinstance(data, dict) or "technique" not in data:
        raise ConfigError(f"a recipe step must be a mapping with a 'technique' key, got {data!r}")
    fields = {k: v for k, v in data.items() if k not in ("technique", "version")}
    cls = get(data["technique"]).config
    # configs written before versions existed have none: they are version 1
    version = data.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"{data['technique']}: version must be a positive integer, got {version!r}")
    if version > cls.config_version:
        raise ConfigError(f"{data['technique']} config version {version} is newer than this effdl's "
                          f"({cls.config_version}): upgrade effdl to read it")
    return cls(**fields)


def schema(tech: Technique) -> list[dict[str, Any]]:
    """Field name, type, default and constraints, for `effdl techniques`."""
    rows = []
    js = tech.config.model_json_schema()
    for name, info in js.get("properties", {}).items():
        constraints = {k: v for k, v in info.items() if k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum")}
        if "anyOf" in info:
            constraints["any_of"] = [x.get("type", x.get("const")) for x in info["anyOf"]]
        rows.append({
            "name": name,
            "type": info.get("type", "any"),
            "default": info.get("default"),
            "constraints": constraints,
            "description": info.get("description", ""),
        })
    return rows


def apply(task_or_model, config: TechniqueConfig, *, task=None, inplace: bool = False) -> nn.Module:
    """Apply one technique and return the new model; the caller's model is untouched unless inplace.

    ``task_or_model`` may be a Task (its model is used, and it supplies data) or an nn.Module
    (then pass ``task=`` for techniques that need calibration or training data).
    """
    from .task import Task

    if isinstance(task_or_model, Task):
        task = task_or_model if task is None else task
        model = task_or_model.model
    elif isinstance(task_or_model, nn.Module):
        model = task_or_model
    else:
        raise ConfigError(f"apply() takes a Task or an nn.Module, got {type(task_or_model).__name__}")
    tech = for_config(config)
    needs = tech.needs_for(config)
    if needs != "nothing" and task is None:
        raise ConfigError(f"{tech.name} needs {needs} data: pass a Task (task=effdl.Classification(...) or another "
                          "effdl task)")
    if tech.tasks is not None and task is not None and task.kind not in tech.tasks:
        raise ConfigError(f"{tech.name} works on {', '.join(tech.tasks)} tasks, not on a {task.kind} task: "
                          "leave it out of this task's recipes")
    if not inplace:
        model = copy.deepcopy(model)
    return tech.fn(model, config, task)

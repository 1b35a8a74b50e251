"""Recipes: an ordered list of technique configs, stored as YAML/JSON, applied in order.

Order matters (textbook: prune, then distill, then quantize); techniques refuse inputs they
cannot take (e.g. pruning an already-quantized model), so an illegal order fails loudly.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch.nn as nn
import yaml

from ..core.config import TechniqueConfig
from ..core.errors import ConfigError
from ..core.registry import apply, config_from_dict


@dataclass(frozen=True)
class Recipe:
    steps: tuple[TechniqueConfig, ...] = ()
    model: str | None = None  # e.g. "zoo:lenet5" when the recipe file names it
    data: str | None = None

    def __post_init__(self) -> None:
        for s in self.steps:
            if not isinstance(s, TechniqueConfig):
                raise ConfigError(f"recipe steps must be technique configs, got {type(s).__name__}")

    def to_list(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.steps]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.model:
            out["model"] = self.model
        if self.data:
            out["data"] = self.data
        out["steps"] = self.to_list()
        return out

    def label(self) -> str:
        return " + ".join(s.short() for s in self.steps) or "baseline"

    @classmethod
    def from_list(cls, steps: Iterable[dict[str, Any]], **kw) -> "Recipe":
        return cls(tuple(config_from_dict(d) for d in steps), **kw)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recipe":
        if not isinstance(data, dict) or "steps" not in data:
            raise ConfigError("a recipe must be a mapping with a 'steps' list (and optional 'model', 'data')")
        unknown = set(data) - {"steps", "model", "data"}
        if unknown:
            raise ConfigError(f"unknown recipe keys {sorted(unknown)}: a recipe has 'steps', 'model', 'data'")
        if not isinstance(data["steps"], list):
            raise ConfigError("the recipe's 'steps' must be a list of {technique: name, ...} mappings")
        return cls.from_list(data["steps"], model=data.get("model"), data=data.get("data"))

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipe file {str(p)!r} does not exist")
        text = p.read_text()
        try:
            data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"recipe {str(p)!r} is not valid {p.suffix.lstrip('.') or 'YAML'}: {exc}") from None
        return cls.from_dict(data)

    def dump_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def apply_recipe(task, recipe: Recipe | Iterable[TechniqueConfig], model: nn.Module | None = None) -> nn.Module:
    """Apply each step to a copy of ``model`` (default: the task's model) and return the result."""
    steps = recipe.steps if isinstance(recipe, Recipe) else tuple(recipe)
    current = task.model if model is None else model
    for step in steps:
        current = apply(current, step, task=task)
    return current

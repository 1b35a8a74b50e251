"""Selecting modules by name pattern. A pattern that matches nothing is an error, never a no-op."""
from __future__ import annotations

import fnmatch
from typing import Iterable

import torch.nn as nn

from .errors import ConfigError, suggest


def match_scopes(model: nn.Module, patterns: Iterable[str]) -> set[str]:
    """Names of modules matching any glob pattern (a match also covers the module's children)."""
    names = [n for n, _ in model.named_modules() if n]
    matched: set[str] = set()
    for pat in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise ConfigError(
                f"scope pattern {pat!r} matches no module.{suggest(pat, names)} Module names: "
                f"{', '.join(names[:30])}{' ...' if len(names) > 30 else ''}"
            )
        matched.update(hits)
    return matched


def is_excluded(name: str, excluded: set[str]) -> bool:
    return any(name == e or name.startswith(e + ".") for e in excluded)


def weighted_layers(model: nn.Module, types: tuple[type, ...], exclude: Iterable[str] = ()) -> list[tuple[str, nn.Module]]:
    """(name, module) of the layers of ``types`` not excluded; a shared module appears once."""
    excluded = match_scopes(model, exclude)
    seen: set[int] = set()
    out = []
    for name, m in model.named_modules():
        if isinstance(m, types) and not is_excluded(name, excluded) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            out.append((name, m))
    return out

"""Technique configs: frozen, validated at construction, round-trip to JSON/YAML.

Constraints are declared on the fields (pydantic); unknown keys are refused with the closest
valid name suggested, and every validation failure becomes a ConfigError (never an assert).
"""
from __future__ import annotations

from typing import Any, ClassVar

import pydantic

from .errors import ConfigError, suggest


def _explain(cls: type, exc: pydantic.ValidationError) -> str:
    parts = []
    fields = list(cls.model_fields)
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(config)"
        if err["type"] == "extra_forbidden":
            parts.append(
                f"unknown key {loc!r} for {cls.__name__}.{suggest(loc, fields)} Valid keys: {', '.join(fields)}"
            )
        else:
            parts.append(f"{cls.__name__}.{loc}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


class TechniqueConfig(pydantic.BaseModel):
    """Base of every technique config. Subclasses declare fields with constraints only."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", validate_default=True)
    #: the registered dotted name, set by ``register``.
    technique: ClassVar[str] = ""
    #: bumped when a field's meaning changes; stored as "version" by to_dict and checked on load
    #: (core.registry.config_from_dict) so an older effdl refuses a newer recipe step
    config_version: ClassVar[int] = 1

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except pydantic.ValidationError as exc:
            raise ConfigError(_explain(type(self), exc)) from None

    def to_dict(self) -> dict[str, Any]:
        """{'technique': name, 'version': config_version, **fields} — what recipes store."""
        return {"technique": self.technique, "version": self.config_version, **self.model_dump(mode="json")}

    def short(self) -> str:
        """Compact human label, e.g. ``prune.magnitude(sparsity=0.8)`` (non-default fields only)."""
        fields = self.model_dump(mode="json", exclude_defaults=True)
        inner = ",".join(f"{k}={v}" for k, v in fields.items())
        return f"{self.technique}({inner})"

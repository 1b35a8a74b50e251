"""Conformance checks for techniques: register a technique and it gets all of them.

- ``model_kind(kind)``: a tiny task of each model kind (``core.registry.MODEL_KINDS``) on real data;
- ``CHECKS``: the individual checks, each ``check(technique_name, kind)`` (``check.per_kind``
  says whether it runs once per claimed model kind, ``check.id`` names it);
- ``check_technique(name, kinds=None)``: every check for one registered technique.
"""
from .conformance import CHECKS, check_technique, invalid_values
from .kinds import model_kind

__all__ = ["CHECKS", "check_technique", "invalid_values", "model_kind"]

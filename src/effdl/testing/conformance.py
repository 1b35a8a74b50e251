"""The checks every registered technique must pass (like scikit-learn's ``check_estimator``).

Each check is a function ``check(name, kind)``: ``name`` a registered technique, ``kind`` one of
the model kinds it claims (``None`` for the checks that do not depend on a model, ``per_kind``
False). A failure raises AssertionError saying what the technique did wrong.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable

import torch
import torch.nn as nn
import yaml

from ..core.compressed import CompressedModel
from ..core.errors import ConfigError
from ..core.registry import Technique, apply, config_from_dict, get
from .kinds import model_kind

#: the task kind each model kind's tiny task has (see kinds.model_kind)
TASK_OF_KIND = {"cnn": "classification", "mlp": "classification", "encoder": "sentence-embedding",
                "decoder": "causal-lm"}
#: cheapest first: kind-independent checks that need a model use the first claimed kind of these
CHEAPEST = ("mlp", "cnn", "encoder", "decoder")


def _check(check_id: str, per_kind: bool):
    """Marks a check: ``id`` names it in test ids, ``per_kind`` runs it once per claimed model kind."""
    def deco(fn):
        fn.id, fn.per_kind = check_id, per_kind
        return fn
    return deco


def _fail(tech: Technique, kind: str | None, what: str) -> AssertionError:
    where = f" on {kind}" if kind else ""
    return AssertionError(f"{tech.name}{where}: {what}")


def _cheapest_kind(tech: Technique) -> str | None:
    return next((k for k in CHEAPEST if k in tech.models), None)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer by name (a tensor shared under two names is kept under
    each), with the parameters' requires_grad flags."""
    out = {f"param:{n}": p.detach().clone().requires_grad_(p.requires_grad)
           for n, p in model.named_parameters(remove_duplicate=False)}
    out.update({f"buffer:{n}": b.detach().clone() for n, b in model.named_buffers(remove_duplicate=False)})
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    # compare bytes, so -0.0 vs +0.0 and NaN payloads count as changes too
    return t.contiguous().view(-1).view(torch.uint8) if t.is_floating_point() else t


def _modes(model: nn.Module) -> dict[str, bool]:
    return {n: m.training for n, m in model.named_modules()}


def _output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        model.train(was)
    return out[0] if isinstance(out, (tuple, list)) else out


# -- configs ---------------------------------------------------------------------------------------

@_check("roundtrip", per_kind=False)
def check_roundtrip(name: str, kind: str | None = None) -> None:
    """to_dict() -> JSON -> config_from_dict and -> YAML -> config_from_dict give the same config
    (for the example config and, when it can be built, the default one)."""
    tech = get(name)
    configs = [tech.example_config()]
    try:
        configs.append(tech.config())
    except ConfigError:
        pass  # a config with required fields (e.g. learn.hint's layer names) has no default
    for cfg in configs:
        d = cfg.to_dict()
        if d.get("technique") != name:
            raise _fail(tech, None, f"to_dict() names technique {d.get('technique')!r}, not {name!r}")
        for how, back in (("JSON", json.loads(json.dumps(d))), ("YAML", yaml.safe_load(yaml.safe_dump(d)))):
            got = config_from_dict(back)
            if got != cfg:
                raise _fail(tech, None, f"{cfg!r} comes back from {how} as {got!r}")


@_check("version", per_kind=False)
def check_version(name: str, kind: str | None = None) -> None:
    """to_dict() stores the config's version; a missing one reads as 1, a newer one is refused."""
    tech = get(name)
    cfg = tech.example_config()
    d = cfg.to_dict()
    v = type(cfg).config_version
    if not isinstance(v, int) or v < 1 or d.get("version") != v:
        raise _fail(tech, None, f"to_dict() has version {d.get('version')!r}, the class {v!r} (a positive int)")
    if v == 1 and config_from_dict({k: x for k, x in d.items() if k != "version"}) != cfg:
        raise _fail(tech, None, "a step without 'version' does not load as version 1")
    for bad in (v + 1, "one", 0):
        try:
            config_from_dict({**d, "version": bad})
        except ConfigError:
            continue
        except Exception as exc:
            raise _fail(tech, None, f"version={bad!r} raised {type(exc).__name__}, not ConfigError: {exc}") from exc
        raise _fail(tech, None, f"version={bad!r} was accepted (this effdl's is {v})")


def _accepts(schema: dict, value: Any) -> bool:
    """Whether ``value`` satisfies ``schema`` as far as this module's generators go (types, bounds,
    enums, lengths); unknown schemas accept anything, so no generated value is wrongly called invalid."""
    if "$ref" in schema:
        return True
    if "anyOf" in schema:
        return any(_accepts(s, value) for s in schema["anyOf"])
    if "const" in schema and value != schema["const"]:
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    t = schema.get("type")
    if t is None:
        return True
    if t == "null":
        return value is None
    if t == "boolean":
        return isinstance(value, bool)
    if t == "string":
        return isinstance(value, str)
    if t in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if t == "integer" and not float(value).is_integer():
            return False
        lo, hi = schema.get("minimum"), schema.get("maximum")
        xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        return not ((lo is not None and value < lo) or (hi is not None and value > hi)
                    or (xlo is not None and value <= xlo) or (xhi is not None and value >= xhi))
    if t == "array":
        if not isinstance(value, (list, tuple)):
            return False
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", math.inf):
            return False
        items = schema.get("items")
        return items is None or all(_accepts(items, v) for v in value)
    return True


def _outside(schema: dict) -> list[Any]:
    """Values just outside one schema branch's declared constraints."""
    out: list[Any] = []
    t = schema.get("type")
    if "enum" in schema:
        out.append("not-a-choice" if t == "string" else max((v for v in schema["enum"] if isinstance(v, int)), default=0) + 7)
    if "const" in schema:
        c = schema["const"]
        out.append(c + 1 if isinstance(c, int) and not isinstance(c, bool) else f"not-{c}")
    if t in ("integer", "number"):
        step = 1 if t == "integer" else None
        for key, sign in (("minimum", -1), ("maximum", +1)):
            if key in schema:
                b = schema[key]
                out.append(b + sign * (step or max(1e-6, abs(b) * 1e-6)))
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            if key in schema:
                out.append(schema[key])  # the bound itself is just outside
        if t == "integer":
            out.append(1.5)  # not a whole number
    if t == "array":
        n_min = schema.get("minItems", 0)
        if n_min > 0:
            out.append([])
        items = schema.get("items")
        if isinstance(items, dict):
            for bad in _outside(items):
                out.append([bad] * max(n_min, 1))
    return out


#: values of the wrong type for most fields (a mapping for anything, a non-numeric string for a
#: number, a fraction for an integer or a string, a list for a scalar); each is only used where no
#: branch of the field's schema accepts it
WRONG_TYPES = ({"not": "a value"}, "not-a-value", 1.5, [1.5])


def invalid_values(config_cls) -> list[tuple[str, Any]]:
    """(field, value) pairs that break a field's declared constraints, generated from the JSON
    schema: just outside each bound, not in an enum or const, the wrong type, a list too short."""
    js = config_cls.model_json_schema()
    pairs: list[tuple[str, Any]] = []
    for field, schema in js.get("properties", {}).items():
        branches = schema.get("anyOf", [schema])
        if not any("type" in b or "enum" in b or "const" in b for b in branches):
            continue  # untyped (Any): nothing is unambiguously wrong
        cands = [v for b in branches for v in _outside(b)] + list(WRONG_TYPES)
        seen = []
        for v in cands:
            # a value some branch accepts is not invalid (e.g. 1.5 for a number-or-null field)
            if not _accepts(schema, v) and v not in seen:
                seen.append(v)
                pairs.append((field, v))
    return pairs


@_check("invalid-values", per_kind=False)
def check_invalid_values(name: str, kind: str | None = None) -> None:
    """Each value generated outside a field's declared constraints raises ConfigError (not pydantic's
    ValidationError, not TypeError, not success)."""
    tech = get(name)
    base = tech.example_config().model_dump()
    pairs = invalid_values(tech.config)
    if not pairs and tech.config.model_fields:
        raise _fail(tech, None, "no field declares a type or constraint the suite can test")
    for field, value in pairs:
        try:
            cfg = tech.config(**{**base, field: value})
        except ConfigError:
            continue
        except Exception as exc:
            raise _fail(tech, None, f"{field}={value!r} raised {type(exc).__name__}, not ConfigError: {exc}") from exc
        raise _fail(tech, None, f"{field}={value!r} was accepted (as {getattr(cfg, field)!r}), "
                                f"outside its declared {tech.config.model_json_schema()['properties'][field]}")


# -- applying ----------------------------------------------------------------------------------------

#: the last application per model kind: no-mutation and runs check the same one (an apply on a
#: decoder costs seconds), at most one model set per kind is kept alive
_APPLIED: dict[str, tuple[str, Any]] = {}


def _apply_checked(tech: Technique, kind: str):
    """Apply the example config to a fresh task of ``kind``; (task, model state before, result)."""
    hit = _APPLIED.get(kind)
    if hit is not None and hit[0] == tech.name:
        return hit[1]
    _APPLIED.pop(kind, None)
    task = model_kind(kind)
    before, modes = _state(task.model), _modes(task.model)
    try:
        result = apply(task, tech.example_config())
    except Exception as exc:
        raise _fail(tech, kind, f"apply raised {type(exc).__name__}: {str(exc)[:500]}") from exc
    _APPLIED[kind] = (tech.name, (task, (before, modes), result))
    return task, (before, modes), result


@_check("no-mutation", per_kind=True)
def check_no_mutation(name: str, kind: str) -> None:
    """apply(task, cfg) leaves every parameter and buffer of task.model bit-identical, and its
    modules' training flags as they were."""
    tech = get(name)
    task, (before, modes), _ = _apply_checked(tech, kind)
    after = _state(task.model)
    if after.keys() != before.keys():
        raise _fail(tech, kind, f"the input model's tensors changed names: {sorted(after.keys() ^ before.keys())[:5]}")
    for key, t in before.items():
        u = after[key]
        if t.shape != u.shape or t.dtype != u.dtype or not torch.equal(_bits(t), _bits(u)):
            raise _fail(tech, kind, f"the input model's {key} was modified")
    changed = [n for n, m in task.model.named_modules() if modes.get(n) != m.training]
    if changed:
        raise _fail(tech, kind, f"the input model's training flag changed on {changed[:5]}")
    frozen = [n for n, p in task.model.named_parameters() if p.requires_grad != before[f"param:{n}"].requires_grad]
    if frozen:
        raise _fail(tech, kind, f"the input model's requires_grad changed on {frozen[:5]}")


@_check("runs", per_kind=True)
def check_runs(name: str, kind: str) -> None:
    """On a claimed model kind the example config runs and returns a module whose output on
    task.example_input(2) has the input model's shape."""
    tech = get(name)
    task, _, result = _apply_checked(tech, kind)
    if not isinstance(result, nn.Module):
        raise _fail(tech, kind, f"returned a {type(result).__name__}, not an nn.Module")
    x = task.example_input(2)
    want = _output(task.model, x).shape
    try:
        got = _output(result, x)
    except Exception as exc:
        raise _fail(tech, kind, f"the result's forward raised {type(exc).__name__}: {str(exc)[:300]}") from exc
    if not isinstance(got, torch.Tensor) or got.shape != want:
        raise _fail(tech, kind, f"the result outputs {getattr(got, 'shape', type(got).__name__)}, the input model {tuple(want)}")
    if not torch.isfinite(got.float()).all():
        raise _fail(tech, kind, "the result outputs non-finite values")


@_check("refuses-quantized", per_kind=False)
def check_refuses_quantized(name: str, kind: str | None = None) -> None:
    """A model already quantized (quantize.weights) is refused with ConfigError, unless the
    technique declares ``takes_quantized``."""
    tech = get(name)
    if tech.takes_quantized:
        return
    kind = _cheapest_kind(tech) or "mlp"  # refusing comes first, so any model will do
    from ..compress.quantize.weight_only import WeightOnlyConfig

    task = model_kind(kind)
    q = apply(task.model, WeightOnlyConfig(bits=8))
    if not isinstance(q, CompressedModel):
        raise AssertionError(f"quantize.weights gave a {type(q).__name__}, not a CompressedModel")
    try:
        apply(task.with_model(q), tech.example_config())
    except ConfigError:
        return
    except Exception as exc:
        raise _fail(tech, kind, f"on a quantized model it raised {type(exc).__name__}, not ConfigError "
                                f"(call core.forms.refuse_quantized first): {str(exc)[:300]}") from exc
    raise _fail(tech, kind, "ran on an already-quantized model: refuse it (core.forms.refuse_quantized) or "
                            "register it with takes_quantized=True")


@_check("needs-task", per_kind=False)
def check_needs_task(name: str, kind: str | None = None) -> None:
    """Without a task, a technique that needs data refuses with a ConfigError naming what it needs;
    one that declares it needs nothing runs on a bare module or says with a ConfigError what else
    it needs (e.g. prune.channels: an input_shape to trace the model)."""
    tech = get(name)
    cfg = tech.example_config()
    needs = tech.needs_for(cfg)
    kind = _cheapest_kind(tech)
    if kind is None:
        if needs == "nothing":
            return  # no model it claims to run on
        kind = "mlp"  # refusing comes first, so any model will do
    model = model_kind(kind).model
    try:
        apply(model, cfg)
    except ConfigError as exc:
        if needs == "nothing":
            return
        if needs not in str(exc):
            raise _fail(tech, kind, f"refused a bare model without naming what it needs ({needs}): {exc}") from exc
        return
    except Exception as exc:
        raise _fail(tech, kind, f"on a bare model (no task) it raised {type(exc).__name__}: {str(exc)[:300]}") from exc
    if needs != "nothing":
        raise _fail(tech, kind, f"declares it needs {needs} data but ran without a task")


@_check("task-kinds", per_kind=False)
def check_task_kinds(name: str, kind: str | None = None) -> None:
    """A technique declaring ``tasks=`` claims no model kind outside them and refuses a task of
    another kind with ConfigError."""
    tech = get(name)
    if tech.tasks is None:
        return
    wrong = [k for k in tech.models if TASK_OF_KIND[k] not in tech.tasks]
    if wrong:
        raise _fail(tech, None, f"claims model kinds {wrong} whose tasks are not among its tasks {tech.tasks}")
    other = next((k for k in CHEAPEST if TASK_OF_KIND[k] not in tech.tasks), None)
    if other is None:
        return
    task = model_kind(other)
    try:
        apply(task, tech.example_config())
    except ConfigError as exc:
        if TASK_OF_KIND[other] not in str(exc):
            raise _fail(tech, other, f"refused a {TASK_OF_KIND[other]} task without naming it: {exc}") from exc
        return
    except Exception as exc:
        raise _fail(tech, other, f"on a {TASK_OF_KIND[other]} task it raised {type(exc).__name__}, not "
                                 f"ConfigError: {str(exc)[:300]}") from exc
    raise _fail(tech, other, f"ran on a {TASK_OF_KIND[other]} task though it declares tasks={tech.tasks}")


CHECKS: list[Callable[..., None]] = [
    check_roundtrip, check_version, check_invalid_values, check_needs_task, check_task_kinds,
    check_refuses_quantized, check_no_mutation, check_runs,
]


def check_technique(name: str, kinds=None) -> None:
    """Run every check of CHECKS on technique ``name``, the per-kind ones on ``kinds`` (default: the
    kinds it claims). Raises AssertionError at the first failure."""
    tech = get(name)
    kinds = tech.models if kinds is None else tuple(kinds)
    for check in CHECKS:
        if check.per_kind:
            for kind in kinds:
                check(name, kind)
        else:
            check(name, None)

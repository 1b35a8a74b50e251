"""Search spaces: a recipe template whose fields are distributions.

A space is an ordered list of slots; a slot is one technique step, or ``one_of`` several, and may be
``optional`` (the trial may leave it out). Each field of a step is either fixed (a plain value) or
searched:

    sparsity: auto                         # the range or choices the config declares (pydantic constraints)
    finetune_epochs: {range: [0.5, 4]}     # a range where the config leaves one end open
    lr: {range: [1e-4, 1e-2], log: true}
    calibration: {choices: [minmax, percentile]}

The ranges are not a second table beside the configs: ``auto`` reads the field's declared bounds
and Literal choices, and an explicit range is checked against them. A trial samples one recipe
(``SearchSpace.suggest(trial)``); its parameters are named ``<slot>`` (which technique, or "none")
and ``<technique>.<field>``.
"""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping, Union

import annotated_types
import yaml

from ..core.config import TechniqueConfig
from ..core.errors import ConfigError, suggest
from ..core.registry import get
from ..pipeline.recipe import Recipe

NONE = "none"  # a left-out optional slot


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False

    def sample(self, trial, name: str) -> float:
        value = trial.suggest_float(name, self.low, self.high, log=self.log)
        short = float(f"{value:.3g}")  # readable recipes; a rounded end that leaves the range keeps the raw value
        return short if self.low <= short <= self.high else value


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False

    def sample(self, trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log)


@dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]

    def sample(self, trial, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.values))


@dataclass(frozen=True)
class PerLayer:
    """One distribution per layer of the model (a compression policy, AMC/HAQ style): on a mapping
    field (e.g. prune.weights' layer_sparsity) each layer gets a sampled value; on a list of layer
    names (e.g. quantize.ptq's exclude) a layer is listed when its sampled choice is true."""

    each: "FloatRange | IntRange | Choice"


Dist = Union[FloatRange, IntRange, Choice, PerLayer]


def _bounds(info) -> tuple[float | None, float | None, bool, bool]:
    """(low, high, low_open, high_open) from a pydantic field's annotated-types metadata."""
    low = high = None
    low_open = high_open = False
    for m in info.metadata:
        if isinstance(m, annotated_types.Ge):
            low = m.ge
        elif isinstance(m, annotated_types.Gt):
            low, low_open = m.gt, True
        elif isinstance(m, annotated_types.Le):
            high = m.le
        elif isinstance(m, annotated_types.Lt):
            high, high_open = m.lt, True
    return low, high, low_open, high_open


def _literal_values(annotation) -> tuple[Any, ...] | None:
    if annotation is bool:
        return (False, True)
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    return None


def field_dist(config: type[TechniqueConfig], name: str, spec: Any) -> Dist:
    """The distribution of ``config``'s field ``name`` for the template value ``spec`` (``"auto"``,
    ``{range: [lo, hi], log: bool}`` or ``{choices: [...]}``), checked against the field's declaration
    (``check_step`` then checks each end and choice as a whole config)."""
    where = f"{config.technique}.{name}"
    info = config.model_fields[name]
    if isinstance(spec, Mapping) and set(spec) == {"per_layer"}:
        kind = _layer_field(info.annotation)
        if kind is None:
            raise ConfigError(f"{where} is not a per-layer field (a layer -> value mapping or a list of layer names): "
                              "per_layer does not apply to it")
        each = spec["per_layer"]
        if not (isinstance(each, Mapping) and ("range" in each or "choices" in each)):
            raise ConfigError(f"{where}: per_layer takes one layer's distribution, {{range: [lo, hi]}} or "
                              f"{{choices: [...]}}, got {each!r}")
        if kind == "names" and not (set(each) == {"choices"} and isinstance(each["choices"], (list, tuple))
                                    and set(each["choices"]) <= {False, True}):
            raise ConfigError(f"{where} lists layers: per_layer takes {{choices: [false, true]}} (listed or not)")
        return PerLayer(_value_dist(where, float if kind == "mapping" else bool, each))
    return _value_dist(where, info.annotation, spec, info)


def _layer_field(annotation) -> str | None:
    """'mapping' for tuple[tuple[str, number], ...] (layer -> value), 'names' for tuple[str, ...]."""
    if typing.get_origin(annotation) is not tuple:
        return None
    args = typing.get_args(annotation)
    if len(args) != 2 or args[1] is not Ellipsis:
        return None
    if args[0] is str:
        return "names"
    if typing.get_origin(args[0]) is tuple and typing.get_args(args[0])[:1] == (str,):
        return "mapping"
    return None


def _value_dist(where: str, annotation, spec: Any, info=None) -> Dist:
    """A scalar field's distribution (``info``: its pydantic FieldInfo, for ``auto``'s declared bounds)."""
    name = where.rsplit(".", 1)[-1]
    choices = _literal_values(annotation)
    numeric = annotation in (int, float)
    if spec == "auto" and info is not None:
        if choices is not None:
            return Choice(tuple(choices))
        if not numeric:
            raise ConfigError(f"{where} is a {getattr(annotation, '__name__', annotation)} field: "
                              "'auto' searches numbers and declared choices only; give {choices: [...]}")
        low, high, low_open, high_open = _bounds(info)
        if low is None or high is None:
            raise ConfigError(f"{where} declares no {'upper' if high is None else 'lower'} bound, so 'auto' has no "
                              f"range: give one, e.g. {name}: {{range: [lo, hi]}}")
        if annotation is int:
            return IntRange(int(low) + low_open, int(high) - high_open)
        # an open end is excluded: step one float inside it
        return FloatRange(math.nextafter(low, high) if low_open else float(low),
                          math.nextafter(high, low) if high_open else float(high))
    if isinstance(spec, Mapping) and set(spec) <= {"range", "log"} and "range" in spec:
        rng = spec["range"]
        if not (isinstance(rng, (list, tuple)) and len(rng) == 2 and all(isinstance(v, (int, float)) for v in rng)
                and rng[0] < rng[1]):
            raise ConfigError(f"{where}: range must be [low, high] with low < high, got {rng!r}")
        if not numeric:
            raise ConfigError(f"{where} is not a number: search it with {{choices: [...]}}")
        log = bool(spec.get("log", False))
        if log and rng[0] <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0, got {rng[0]}")
        if annotation is int:
            return IntRange(int(rng[0]), int(rng[1]), log)
        return FloatRange(float(rng[0]), float(rng[1]), log)
    if isinstance(spec, Mapping) and set(spec) == {"choices"}:
        values = spec["choices"]
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"{where}: choices must be a non-empty list, got {values!r}")
        return Choice(tuple(values))
    raise ConfigError(f"{where}: a searched field is 'auto', {{range: [lo, hi], log: bool}} or {{choices: [...]}}, "
                      f"got {spec!r}")


def _values(d: Dist) -> tuple[Any, ...]:
    """The values that stand for a distribution when a config is checked: its ends or its choices; a
    per-layer field as one stand-in layer (the model's real names are known only when a trial builds)."""
    if isinstance(d, PerLayer):
        ends = _values(d.each)
        if isinstance(d.each, Choice) and set(d.each.values) <= {False, True}:
            return ((), ("stand-in layer",))  # a list of layer names: none listed, one listed
        return tuple(((("stand-in layer", v),)) for v in ends)
    return d.values if isinstance(d, Choice) else (d.low, d.high)


def check_step(config: type[TechniqueConfig], fixed: dict[str, Any], searched: dict[str, Dist]) -> None:
    """Every end and choice of every searched field must make a valid config (the config's own
    constraints, cross-field rules included) with the fixed fields and the other fields' first values."""
    first = {k: _values(d)[-1 if isinstance(d, PerLayer) else 0] for k, d in searched.items()}
    config(**fixed, **first)
    for k, d in searched.items():
        for v in _values(d):
            config(**fixed, **{**first, k: v})


def layer_names(model, fixed: Mapping[str, Any], field_name: str) -> list[str]:
    """The layers a per-layer field ranges over: the model's Conv/Linear layers, less those the step's
    own ``exclude`` / ``protect_first_last`` leave out (unless ``exclude`` is the field searched)."""
    from ..compress.prune import prunable_layer_names

    exclude = () if field_name == "exclude" else tuple(fixed.get("exclude", ()))
    return prunable_layer_names(model, exclude, bool(fixed.get("protect_first_last", False)))


def _is_search(value: Any) -> bool:
    return value == "auto" or (isinstance(value, Mapping) and bool({"range", "choices", "per_layer"} & set(value)))


def _dist_dict(d: "FloatRange | IntRange | Choice") -> dict[str, Any]:
    return {"choices": list(d.values)} if isinstance(d, Choice) else {"range": [d.low, d.high], "log": d.log}


@dataclass(frozen=True)
class StepTemplate:
    """One technique with fixed fields and searched ones."""

    technique: str
    fixed: tuple[tuple[str, Any], ...]
    searched: tuple[tuple[str, Dist], ...]

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> "StepTemplate":
        if not isinstance(data, Mapping) or "technique" not in data:
            raise ConfigError(f"a search-space step is a mapping with 'technique' and its fields, got {data!r}")
        config = get(data["technique"]).config
        fields = {k: v for k, v in data.items() if k not in ("technique", "version")}
        unknown = set(fields) - set(config.model_fields)
        if unknown:
            config(**fields)  # raises the config's own error, with the closest valid key
        fixed = tuple((k, v) for k, v in fields.items() if not _is_search(v))
        searched = tuple((k, field_dist(config, k, v)) for k, v in fields.items() if _is_search(v))
        check_step(config, dict(fixed), dict(searched))
        return cls(config.technique, fixed, searched)

    def build(self, trial, model=None) -> TechniqueConfig:
        values = {}
        for k, dist in self.searched:
            name = f"{self.technique}.{k}"
            if not isinstance(dist, PerLayer):
                values[k] = dist.sample(trial, name)
                continue
            if model is None:
                raise ConfigError(f"{name} is searched per layer: the space needs the model to name its layers")
            sampled = {layer: dist.each.sample(trial, f"{name}.{layer}") for layer in layer_names(model, dict(self.fixed), k)}
            values[k] = (tuple(layer for layer, listed in sampled.items() if listed) if isinstance(dist.each, Choice)
                         and set(dist.each.values) <= {False, True} else sampled)
        return get(self.technique).config(**dict(self.fixed), **values)


@dataclass(frozen=True)
class Slot:
    name: str
    options: tuple[StepTemplate, ...]
    optional: bool = False

    def build(self, trial, model=None) -> TechniqueConfig | None:
        names = [o.technique for o in self.options] + ([NONE] if self.optional else [])
        pick = trial.suggest_categorical(self.name, names) if len(names) > 1 else names[0]
        if pick == NONE:
            return None
        return next(o for o in self.options if o.technique == pick).build(trial, model)


@dataclass(frozen=True)
class SearchSpace:
    slots: tuple[Slot, ...]
    #: trial parameters evaluated first on a new study (known-good recipes the sampler then builds on)
    seeds: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not self.slots:
            raise ConfigError("the search space is empty: give at least one slot (a technique step to search)")
        techniques = [o.technique for s in self.slots for o in s.options]
        dupes = sorted({t for t in techniques if techniques.count(t) > 1})
        if dupes:  # parameters are named <technique>.<field>: one technique, one place
            raise ConfigError(f"technique {dupes[0]!r} appears twice in the search space: use it in one slot")
        names = [s.name for s in self.slots]
        if len(set(names)) != len(names):
            raise ConfigError(f"slot names must be distinct, got {names}")
        if not any(s.optional or len(s.options) > 1 or any(o.searched for o in s.options) for s in self.slots):
            raise ConfigError("the search space has nothing to search: every field is fixed and no slot is optional "
                              "or one_of; mark a field 'auto' or {range: [lo, hi]}, or a slot optional")
        for seed in self.seeds:
            self.check_params(seed)

    def parameters(self) -> dict[str, Dist | Choice]:
        """Every parameter a trial may sample: slot choices and ``<technique>.<field>`` distributions
        (a per-layer field is one entry; its parameters are ``<technique>.<field>.<layer>``)."""
        out: dict[str, Dist | Choice] = {}
        for s in self.slots:
            names = [o.technique for o in s.options] + ([NONE] if s.optional else [])
            if len(names) > 1:
                out[s.name] = Choice(tuple(names))
            for o in s.options:
                out.update({f"{o.technique}.{k}": d for k, d in o.searched})
        return out

    def check_params(self, params: Any) -> None:
        """Refuse trial parameters (a seed) that name no parameter of this space or lie outside it."""
        if not isinstance(params, Mapping):
            raise ConfigError(f"a seed is a mapping of the space's parameters to values, got {params!r}")
        known = self.parameters()
        for name, value in params.items():
            dist = known.get(name)
            layer_of = next((k for k, d in known.items() if isinstance(d, PerLayer) and name.startswith(k + ".")), None)
            if dist is None and layer_of is not None:
                dist = known[layer_of].each
            if dist is None:
                raise ConfigError(f"seed parameter {name!r} is not in the search space.{suggest(name, known)} "
                                  f"Parameters: {', '.join(known)}")
            ok = (value in dist.values) if isinstance(dist, Choice) else (
                isinstance(value, (int, float)) and not isinstance(value, bool) and dist.low <= value <= dist.high)
            if not ok:
                where = f"one of {list(dist.values)}" if isinstance(dist, Choice) else f"in [{dist.low}, {dist.high}]"
                raise ConfigError(f"seed parameter {name}={value!r} is outside the search space: it must be {where}")

    def suggest(self, trial, model=None) -> Recipe:
        """The recipe this trial samples (optional slots it leaves out are skipped); ``model`` names the
        layers of per-layer fields."""
        steps = [s.build(trial, model) for s in self.slots]
        return Recipe(tuple(s for s in steps if s is not None))

    def to_list(self) -> list[dict[str, Any]]:
        """The template as data (what from_list reads), for storing with a study."""
        def step(o: StepTemplate) -> dict[str, Any]:
            out: dict[str, Any] = {"technique": o.technique, **dict(o.fixed)}
            for k, d in o.searched:
                out[k] = {"per_layer": _dist_dict(d.each)} if isinstance(d, PerLayer) else _dist_dict(d)
            return out
        slots = [{"name": s.name, "optional": s.optional, "one_of": [step(o) for o in s.options]} for s in self.slots]
        return {"slots": slots, "seeds": [dict(p) for p in self.seeds]} if self.seeds else slots

    @classmethod
    def from_list(cls, data: Any) -> "SearchSpace":
        """A space from data: a list of slots, or ``{slots: [...], seeds: [{param: value, ...}, ...]}``."""
        seeds: Any = ()
        if isinstance(data, Mapping):
            if set(data) - {"slots", "seeds"} or "slots" not in data:
                raise ConfigError("a search space is a list of slots, or a mapping with 'slots' and optional 'seeds' "
                                  f"(trial parameters to evaluate first), got keys {sorted(data)}")
            seeds = data.get("seeds") or ()
            if not isinstance(seeds, list):
                raise ConfigError("the space's seeds must be a list of {parameter: value} mappings")
            data = data["slots"]
        if not isinstance(data, list):
            raise ConfigError("a search space is a list of slots: each a technique step ({technique: ..., fields}) or "
                              "{one_of: [steps], optional: bool, name: ...}")
        slots = []
        for i, item in enumerate(data):
            if not isinstance(item, Mapping):
                raise ConfigError(f"search-space slot {i} must be a mapping, got {item!r}")
            item = dict(item)
            optional = item.pop("optional", False)
            if not isinstance(optional, bool):
                raise ConfigError(f"search-space slot {i}: optional must be true or false, got {optional!r}")
            name = item.pop("name", None)
            if "one_of" in item:
                if set(item) != {"one_of"} or not isinstance(item["one_of"], list) or not item["one_of"]:
                    raise ConfigError(f"search-space slot {i}: one_of takes a non-empty list of steps (and name, "
                                      f"optional beside it), got {item!r}")
                options = tuple(StepTemplate.parse(o) for o in item["one_of"])
            else:
                options = (StepTemplate.parse(item),)
            slots.append(Slot(str(name or options[0].technique.split(".")[0]), options, optional))
        return cls(tuple(slots), tuple(dict(p) if isinstance(p, Mapping) else p for p in seeds))

    @classmethod
    def load(cls, path: str | Path) -> "SearchSpace":
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"search-space file {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"search-space file {str(p)!r} is not valid YAML: {exc}") from None
        return cls.from_list(data)


def default_space(task) -> SearchSpace:
    """The shipped space for ``task``'s kind (automate/spaces/<kind>.yaml)."""
    kind = task.kind
    name = "encoder" if kind in ("sentence-embedding", "text-classification") else kind
    path = resources.files("effdl.automate") / "spaces" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"effdl ships no default search space for {kind} tasks: pass --space FILE (a YAML list of "
                          "slots, see docs/search.md)")
    data = yaml.safe_load(path.read_text())
    return SearchSpace.from_list(data)

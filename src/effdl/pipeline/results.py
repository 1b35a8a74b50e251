"""Typed results of `optimize`: the goal, each measured candidate, and the results.json they make.

Everything downstream (summary, report, CLI) reads these records; ``Results.save`` / ``Results.load``
write and read results.json (docs/results-schema.md, schema version 2). A version-1 file (effdl
before typed results) is converted on load: its fields map 1:1, and its top-level model/data/command
move into ``provenance``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Mapping

import pydantic

from .. import __version__
from ..core.errors import ArtifactError, ConfigError, suggest
from ..core.io import write_json
from ..core.records import Record, parse_records
from ..core.task import MetricSpec
from ..metrics.measure import Tolerances

SCHEMA_VERSION = 2
#: the footprint field each goal target minimises
TARGETS = {"latency": "latency_ms_p50", "size": "size_bytes"}

Number = int | float  # MAC counts can be fractional per sample (e.g. averaged over a batch)


def _explain(exc: pydantic.ValidationError, limit: int = 5) -> str:
    """pydantic's errors as 'where: what' lines, with a did-you-mean for unknown keys."""
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {loc!r}")
        else:
            parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


class _Record(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")


class Goal(_Record):
    """What to optimise: minimise ``target`` while the quality ``metric`` loses at most ``max_drop``.

    ``metric`` None means the task's primary metric; ``higher_is_better`` None means the task's
    direction for it (``optimize`` fills both in, so a saved goal always has them). ``max_drop`` is
    absolute (0.01 = 1 point of accuracy) unless ``relative``: then it is a fraction of the
    baseline's value (0.05 = 5% worse), the natural form for unbounded lower-is-better metrics such
    as perplexity.
    """

    metric: str | None = None
    higher_is_better: bool | None = None
    max_drop: float = pydantic.Field(0.01, ge=0, allow_inf_nan=False)
    relative: bool = False
    target: Literal["latency", "size"] = "latency"
    batch_size: int = pydantic.Field(1, ge=1)  # batch size of the target latency
    select_on: Literal["val"] = "val"  # the split the constraint is checked on; test is only reported
    latency_tie: float = pydantic.Field(0.05, ge=0, allow_inf_nan=False)
    #: an upper limit on the target footprint (ms for latency, bytes for size); None: no limit
    budget: float | None = pydantic.Field(None, gt=0, allow_inf_nan=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except pydantic.ValidationError as exc:
            raise ConfigError(f"invalid goal: {_explain(exc)}. Valid keys: {', '.join(type(self).model_fields)}") from None

    @property
    def spec(self) -> MetricSpec:
        if self.metric is None or self.higher_is_better is None:
            raise ConfigError("the goal's metric and direction are not resolved yet: pass it through "
                              "Goal.resolve(task) (optimize does this)")
        return MetricSpec(self.metric, self.higher_is_better)

    def drop(self, baseline: float, value: float) -> float:
        """How much worse ``value`` is than ``baseline`` in this goal's terms (positive = worse)."""
        return self.spec.drop(baseline, value, self.relative)

    def feasible(self, baseline: float, value: float) -> bool:
        return self.drop(baseline, value) <= self.max_drop + 1e-12

    def resolve(self, task) -> "Goal":
        """This goal with ``metric`` and ``higher_is_better`` filled in from ``task``."""
        primary = task.metric
        metric = self.metric or primary.name
        hib = self.higher_is_better
        if hib is None:
            if metric != primary.name:
                raise ConfigError(
                    f"metric {metric!r} is not the task's primary metric ({primary.name!r}), so its direction is "
                    "unknown: say it with Goal(higher_is_better=True/False) (CLI: --higher-is-better / --lower-is-better)")
            hib = primary.higher_is_better
        if not self.relative and hib and self.max_drop >= 1:
            raise ConfigError(f"max_drop is an absolute fraction in [0, 1) (0.01 = 1 point), got {self.max_drop}; "
                              "for a drop relative to the baseline set relative=True (CLI: --relative-drop)")
        return self.model_copy(update={"metric": metric, "higher_is_better": hib})


@dataclass(frozen=True)
class MeasureSettings:
    """How candidates are measured (every field changes a measured number, so all are in the cache key).

    The target latency's batch size is the goal's; ``large_batch`` is the second batch size timed
    and parity-checked. ``runtimes`` None tries every runtime a model can be lowered to.
    ``all_runtimes`` False lets a run's RuntimePlanner (pipeline.runtime_choice) skip runtimes that
    were clearly slower on earlier candidates of the same kind; True lowers every candidate to every
    runtime it fits (slower; it can change which runtime wins, so it is in the key).
    """

    large_batch: int = 32
    threads: int = 2
    runtimes: tuple[str, ...] | None = None
    tolerances: Tolerances = field(default_factory=Tolerances)
    repeats: int = 30
    all_runtimes: bool = False

    def __post_init__(self) -> None:
        if self.large_batch < 1 or self.threads < 1 or self.repeats < 1:
            raise ConfigError(f"MeasureSettings: large_batch, threads and repeats must be >= 1, got {self}")
        if self.runtimes is not None:
            if isinstance(self.runtimes, str) or not all(isinstance(r, str) for r in self.runtimes):
                raise ConfigError(f"MeasureSettings.runtimes is a tuple of runtime names, e.g. ('eager', 'ort'), "
                                  f"got {self.runtimes!r}")
            object.__setattr__(self, "runtimes", tuple(self.runtimes))
        if not isinstance(self.all_runtimes, bool):
            raise ConfigError(f"MeasureSettings.all_runtimes is True or False, got {self.all_runtimes!r}")
        if not isinstance(self.tolerances, Tolerances):
            raise ConfigError(f"MeasureSettings.tolerances must be an effdl.Tolerances, got {type(self.tolerances).__name__}")

    def batch_sizes(self, goal: Goal) -> tuple[int, ...]:
        return tuple(dict.fromkeys((goal.batch_size, self.large_batch)))

    def key(self, goal: Goal) -> dict[str, Any]:
        """The settings as they enter a candidate's cache key."""
        return {"batch_sizes": list(self.batch_sizes(goal)), "threads": self.threads,
                "runtimes_allowed": list(self.runtimes) if self.runtimes else None,
                "tolerances": asdict(self.tolerances), "repeats": self.repeats,
                "all_runtimes": self.all_runtimes}


class RuntimeMeasurement(_Record):
    """One runtime tried for a candidate: verified (status "ok") and timed, or failed with its reason."""

    status: Literal["ok", "failed"]
    reason: str | None = None
    precision: str | None = None
    latency_by_batch: dict[str, dict[str, Any]] = {}  # batch size -> latency statistics (p50_ms, p90_ms, ...)
    parity: dict[str, Any] | None = None
    info: dict[str, Any] = {}
    latency_ms_p50: float | None = None  # at the goal's batch size (status "ok" only)
    latency_ms_p90: float | None = None
    #: bytes of what this runtime loads: its ONNX file for the ONNX Runtime lowerings (dense unless
    #: the format packs it), effdl's compact file for the torch runtimes, which rebuild from it
    artifact_bytes: int | None = None


class Footprint(_Record):
    """Static counts of the written model plus the chosen runtime's measurements.

    Every field is optional: a candidate that failed to build has none, one whose every runtime
    failed has only the static ones.
    """

    params: int | None = None
    nonzero_params: int | None = None
    size_bytes: int | None = None  # bytes of the compact safetensors file actually written (what --target size minimises)
    deployed_bytes: int | None = None  # bytes of the artifact the chosen runtime loads (e.g. a dense model.onnx)
    size_bytes_gzip: int | None = None
    size_bytes_dense_fp32: int | None = None
    macs: Number | None = None
    macs_sparse: Number | None = None
    flops: Number | None = None
    energy_uj: float | None = None
    energy_method: str | None = None
    latency_ms_p50: float | None = None
    latency_ms_p90: float | None = None
    throughput_per_s: float | None = None
    batch_size: int | None = None
    threads: int | None = None
    latency_by_batch: dict[str, dict[str, float]] = {}
    peak_mem_bytes: int | None = None


class Candidate(_Record):
    """One candidate recipe, built and measured (or failed, with the reason)."""

    id: str
    label: str
    recipe: list[dict[str, Any]] = []  # the technique steps, as Recipe.to_list() writes them
    status: Literal["ok", "failed"]
    reason: str | None = None
    runtime: str | None = None  # the fastest verified runtime: the footprint and quality are measured on it
    runtimes: dict[str, RuntimeMeasurement] = {}
    quality: dict[str, float] = {}  # test split
    quality_val: dict[str, float] = {}  # validation split (used for choosing)
    footprint: Footprint = Footprint()
    layers: dict[str, dict[str, Any]] = {}  # per-layer params and sparsity
    # what techniques left for the report (sensitivity curves, ...), typed by key (core.records);
    # SerializeAsAny: each dumps as its own class, not as the bare base
    records: dict[str, pydantic.SerializeAsAny[Record]] = {}
    artifacts: dict[str, str] = {}  # kind -> path relative to the output directory
    seconds: float | None = None
    #: wall seconds per stage: apply (the recipe, fine-tuning included), store, measure <runtime>, evaluate
    stage_seconds: dict[str, float] = {}
    quality_drop: float | None = None  # in the goal's terms (Goal.drop), test split
    quality_drop_val: float | None = None
    frontier: dict[str, bool] = {}  # target -> on that frontier
    on_frontier: bool = False  # on the frontier of the goal's target
    #: the search trial that proposed it (None: a fixed grid) and the parameters it sampled
    trial: int | None = None
    params: dict[str, Any] = {}
    #: runtimes not tried for it, each with why (it could not win: cheaper evidence said so)
    runtimes_skipped: dict[str, str] = {}
    #: the candidate whose measurement this is (the same model was proposed again); None: measured fresh
    reused_from: str | None = None

    @pydantic.field_validator("records", mode="before")
    @classmethod
    def _typed_records(cls, value: Any) -> Any:
        return parse_records(value) if isinstance(value, dict) else value

    @pydantic.field_validator("artifacts")
    @classmethod
    def _contained(cls, value: dict[str, str]) -> dict[str, str]:
        # read back from results.json or a study: a path that leaves the output directory is refused
        for kind, rel in value.items():
            if os.path.isabs(rel) or ".." in Path(rel).parts:
                raise ValueError(f"artifact {kind!r} path {rel!r} is absolute or contains '..': artifacts live "
                                 "inside the output directory")
        return value

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class SearchSummary(_Record):
    """How a search went: the sampler, its objectives, trial counts and the measured frontier's
    hypervolume after each finished trial (automate.hypervolume, on the normalised axes below)."""

    sampler: str  # grid | random | tpe | nsga2 | cmaes
    study: str
    storage: str  # the URL with any password removed
    objectives: list[str]  # e.g. ["latency_ms_p50"], or ["quality", "latency_ms_p50", "size_bytes"]
    constraint: str | None = None  # e.g. "validation accuracy drop <= 0.01"
    pruner: str | None = None
    trials: int = 0  # finished (complete, failed or pruned)
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    #: hypervolume of the measured frontier after each complete trial, in trial order
    hypervolume: list[float] = []
    #: the axes and reference point of the hypervolume
    hypervolume_axes: list[str] = []
    hypervolume_reference: list[float] = []
    importances: dict[str, float] = {}  # parameter -> importance (Optuna's fANOVA), when computable
    seconds: float | None = None
    stopped_by: str | None = None  # "trials", "timeout", "space exhausted"; "running" while it runs


class Provenance(_Record):
    """Where the run came from; the CLI fills it, Python callers may leave it None."""

    command: str | None = None
    model: str | None = None
    data: str | None = None


class Export(_Record):
    dir: str
    files: list[str]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Results(_Record):
    """What `optimize` returns and writes as results.json."""

    schema_version: Literal[2] = SCHEMA_VERSION
    effdl_version: str = __version__
    created: str = pydantic.Field(default_factory=_now)  # UTC
    goal: Goal
    provenance: Provenance | None = None
    environment: dict[str, Any] = {}
    baseline: str
    chosen: str | None = None
    chosen_reason: str = ""
    frontier: dict[str, list[str]] = {}
    candidates: list[Candidate]
    export: Export | None = None
    search: SearchSummary | None = None  # None: a fixed grid of candidates

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> "Results":
        if not self.candidates:
            raise ValueError("there are no candidates")
        ids = [c.id for c in self.candidates]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"repeat candidate id {dupes[0]!r}")
        if self.baseline not in ids:
            raise ValueError(f"baseline {self.baseline!r} is not among the candidates ({', '.join(ids)})")
        if self.chosen is not None and self.chosen not in ids:
            raise ValueError(f"chosen {self.chosen!r} is not among the candidates ({', '.join(ids)})")
        if self.goal.metric is None or self.goal.higher_is_better is None:
            raise ValueError("goal.metric and goal.higher_is_better must be set (Goal.resolve fills them)")
        return self

    # --- access -------------------------------------------------------------------------------

    @property
    def by_id(self) -> dict[str, Candidate]:
        return {c.id: c for c in self.candidates}

    @property
    def baseline_candidate(self) -> Candidate:
        return self.by_id[self.baseline]

    @property
    def chosen_candidate(self) -> Candidate | None:
        return None if self.chosen is None else self.by_id[self.chosen]

    # --- files --------------------------------------------------------------------------------

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="python")

    def save(self, path: str | os.PathLike) -> Path:
        """Write results.json atomically (readers never see half a file)."""
        return write_json(path, self.to_json_dict())

    @classmethod
    def from_dict(cls, data: Any, source: str = "results") -> "Results":
        """Validate a parsed results.json (any supported schema version); ArtifactError if it is not one."""
        if isinstance(data, Results):
            return data
        if not isinstance(data, Mapping):
            raise ArtifactError(f"{source} must be a JSON object (as `effdl optimize` writes results.json), "
                                f"got {type(data).__name__}")
        version = data.get("schema_version", 1 if "command" in data or "model" in data else None)
        if version == 1:
            data = upgrade_v1(data, source)
        elif version != SCHEMA_VERSION:
            if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
                raise ArtifactError(
                    f"{source} has schema_version {version}, newer than this effdl {__version__} reads "
                    f"(up to {SCHEMA_VERSION}): upgrade effdl (pip install -U effdl) to read it")
            raise ArtifactError(
                f"{source} has schema_version {version!r}, which effdl does not know (it reads 1 and {SCHEMA_VERSION}): "
                "pass a results.json written by `effdl optimize` (see docs/results-schema.md)")
        try:
            return cls.model_validate(data)
        except pydantic.ValidationError as exc:
            raise ArtifactError(
                f"{source} (schema version {SCHEMA_VERSION}) is malformed: {_explain(exc)}; pass a results.json "
                "written by `effdl optimize` (docs/results-schema.md) or re-run it") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Results":
        """Read results.json back into these types (a version-1 file is converted)."""
        p = Path(path)
        if not p.is_file():
            raise ArtifactError(f"{str(p)!r} not found: pass the results.json in the --out directory of an "
                                "`effdl optimize` run")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{str(p)!r} is not valid JSON ({exc}); re-run `effdl optimize`") from None
        return cls.from_dict(data, source=repr(str(p)))


# --- schema version 1 --------------------------------------------------------------------------

_V1_TOP = {"schema_version", "effdl_version", "created", "command", "goal", "model", "data", "environment",
           "baseline", "chosen", "chosen_reason", "frontier", "candidates", "export"}


def upgrade_v1(data: Mapping[str, Any], source: str = "results") -> dict[str, Any]:
    """A schema-1 results dict in the schema-2 shape.

    Version 1 had the same candidates and goal; its top-level model/data/command become
    ``provenance``, and its goal was always an absolute drop of a higher-is-better metric (v1
    computed drops as baseline minus candidate).
    """
    unknown = set(data) - _V1_TOP
    if unknown:
        raise ArtifactError(f"{source} (schema version 1) has unknown keys {sorted(unknown)}"
                            f"{suggest(sorted(unknown)[0], _V1_TOP)}: pass a results.json written by `effdl optimize`")
    out = {k: v for k, v in data.items() if k not in ("command", "model", "data")}
    out["schema_version"] = SCHEMA_VERSION
    out.setdefault("effdl_version", "unknown")
    out.setdefault("created", "unknown")
    goal = data.get("goal")
    if isinstance(goal, Mapping):
        out["goal"] = {"higher_is_better": True, "relative": False, **goal}
    prov = {k: data.get(k) for k in ("command", "model", "data")}
    if prov["command"] == "":
        prov["command"] = None
    if any(v is not None and v != "python" for v in prov.values()):
        out["provenance"] = prov
    return out


def finite(value: Any) -> float | None:
    """A finite number, else None (bools, NaN and inf are not measurements)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None

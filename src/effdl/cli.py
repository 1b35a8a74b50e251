"""effdl command line: optimize, apply, measure, report, techniques, zoo, data.

Bad input prints one line naming the problem and the fix and exits 2 (a traceback only with --debug).
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import logging
import warnings
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .core.errors import ConfigError, EffdlError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Make models smaller, faster and better, measured.")
# torchao warns at import that its CUDA-only extensions cannot load on a CPU machine; that is expected.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
# copying an exported graph triggers torch's own pytree deprecation notice; not actionable by users
warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
# Logs and CI are not terminals; rich would fold tables to 80 columns there.
out = Console(width=None if sys.stdout.isatty() else 130)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 130)
DEBUG = {"on": False}


def _steady_allocator() -> None:
    from .metrics.latency import reexec_with_steady_malloc

    reexec_with_steady_malloc(["-m", "effdl.cli", *sys.argv[1:]])


def handled(fn):
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except EffdlError as exc:
            if DEBUG["on"]:
                raise
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)

    return wrapper


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="show tracebacks")) -> None:
    DEBUG["on"] = debug
    # effdl's own progress notes (e.g. training a zoo baseline on first use) go to stderr
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("effdl: %(message)s"))
    logging.getLogger("effdl").addHandler(handler)
    logging.getLogger("effdl").setLevel(logging.DEBUG if debug else logging.INFO)


def _task(model: str, data: str, weights: Optional[str], allow_pickle: bool, latency_only: bool = False,
          eval_limit: Optional[int] = None):
    from .data import load_data
    from .specs import build_task, is_text_data

    if not is_text_data(data) and data.startswith("synthetic:") and latency_only:
        err.print(f"[yellow]note:[/] {load_data(data).description}")
    return build_task(model, data, weights=weights, allow_pickle=allow_pickle, latency_only=latency_only,
                      eval_limit=eval_limit)


def _check_out(out_dir: Path) -> None:
    """Refuse, before any work, an --out that is a file or lies where nothing can be written."""
    from .core.errors import ConfigError

    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {str(out_dir)!r} is an existing file: name a directory (it is created if missing)")
    parent = out_dir if out_dir.exists() else next((p for p in out_dir.absolute().parents if p.exists()), Path("/"))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {str(out_dir)!r}: cannot write under {str(parent)!r}: name a directory you can write to")


def _check_runtime(runtime: str, threads: int) -> None:
    """Refuse, before any work, a runtime name or thread count that cannot work."""
    from .core.errors import ConfigError
    from .deploy.runtimes import check_runtime_name

    check_runtime_name(runtime)
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")


def _exit_if_failed(m: dict) -> None:
    """A measurement whose runtime failed is a failed command (exit 1), after its reason is printed."""
    if m["status"] != "ok":
        err.print(f"[bold red]error:[/] the measurement on {m['runtime']} failed (reason above)", highlight=False)
        raise typer.Exit(1)


MODEL_OPT = typer.Option("zoo:lenet5", "--model", help="zoo:<name> (`effdl zoo`), hf:PATH (a local Hugging Face model "
                         "directory) or path/to/file.py:factory")
DATA_OPT = typer.Option("mnist", "--data", help="mnist | digits | mnist1d | stsb | sentiment | austen (`effdl data`) | "
                        "path/to/file.py:factory | synthetic:CxHxW (measure only)")
WEIGHTS_OPT = typer.Option(None, "--weights", help="weights for the model (.safetensors)")
PICKLE_OPT = typer.Option(False, "--allow-pickle", help="allow loading a pickle-based checkpoint you trust")


@app.command()
@handled
def optimize(
    model: str = MODEL_OPT,
    data: str = DATA_OPT,
    weights: Optional[str] = WEIGHTS_OPT,
    allow_pickle: bool = PICKLE_OPT,
    max_drop: float = typer.Option(0.01, "--max-drop", help="largest allowed quality drop vs the baseline: absolute "
                                   "(0.01 = 1 point of accuracy), or with --relative-drop a fraction of the baseline's value"),
    relative_drop: bool = typer.Option(False, "--relative-drop", help="read --max-drop as relative to the baseline "
                                       "(0.05 = 5% worse), e.g. for perplexity and other lower-is-better metrics"),
    target: str = typer.Option("latency", "--target", help="latency (p50 at --batch-size on the candidate's fastest "
                               "runtime) | size (bytes of effdl's compact model file; the artifact each runtime loads, "
                               "e.g. a dense ONNX file, is reported beside it)"),
    metric: Optional[str] = typer.Option(None, "--metric", help="quality metric to constrain (default: the task's primary metric)"),
    higher_is_better: Optional[bool] = typer.Option(None, "--higher-is-better/--lower-is-better",
                                                    help="direction of --metric when it is not the task's primary metric"),
    batch_size: int = typer.Option(1, "--batch-size", help="batch size of the target latency"),
    budget: Optional[float] = typer.Option(None, "--budget", help="upper limit on the target: ms p50 (latency) or "
                                           "bytes (size); a candidate over it is not chosen"),
    runtimes: Optional[str] = typer.Option(None, "--runtimes", help="comma-separated subset, e.g. eager,ort,ort-int8"),
    threads: int = typer.Option(2, "--threads"),
    latency_tie: float = typer.Option(0.05, "--latency-tie", help="latencies within this fraction of the fastest count as tied (noise); ties go to the smaller model"),
    out_dir: Path = typer.Option(Path("runs/demo"), "--out"),
    strategy: str = typer.Option("shrink-and-improve", "--strategy", help="shrink-and-improve (picks the grid for the "
                                 "task: images/signals or text) | broad | quantization | sparse-training | lowrank | "
                                 "learning | text"),
    candidates: Optional[Path] = typer.Option(None, "--candidates", help="YAML/JSON list of candidates "
                                              "({label, steps, runtimes}) instead of a strategy; the first is the baseline"),
    large_batch: Optional[int] = typer.Option(None, "--large-batch", help="second batch size timed and parity-checked "
                                              "(default 32; 4 for language models, whose batches are long sequences)"),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="text tasks: evaluate on at most this many "
                                             "examples (pairs, texts or windows) per validation/test split"),
    repeats: int = typer.Option(30, "--repeats", help="timed calls per runtime and batch size (after warm-up)"),
    search: Optional[str] = typer.Option(None, "--search", help="search instead of measuring the whole grid: "
                                         "grid (the strategy's candidates) | random | tpe | nsga2 | cmaes"),
    trials: int = typer.Option(30, "--trials", help="--search: trials in the study (all workers together)"),
    timeout: Optional[float] = typer.Option(None, "--timeout", "--time-budget", help="--search: stop starting "
                                            "trials after this many seconds"),
    objectives: Optional[str] = typer.Option(None, "--objectives", help="--search: footprints to minimise, "
                                             "comma-separated (latency,size); several imply a Pareto search"),
    pruner: str = typer.Option("none", "--pruner", help="--search: none | median | hyperband: stop a trial whose "
                               "fine-tuning is further beyond --max-drop than its peers' at the same epoch (single "
                               "objective; may stop aggressive candidates that would recover, see docs/search.md)"),
    space: Optional[Path] = typer.Option(None, "--space", help="--search: YAML search space (default: the one "
                                         "shipped for the task's kind; docs/search.md)"),
    study: str = typer.Option("effdl-search", "--study", help="--search: study name in the storage"),
    storage: Optional[str] = typer.Option(None, "--storage", help="--search: sqlite:///FILE (default OUT/study.db), "
                                          "journal:FILE (several processes) or postgresql://... (several machines)"),
    seed: int = typer.Option(0, "--seed", help="--search: the sampler's seed"),
    heartbeat: int = typer.Option(20, "--heartbeat", help="--search: seconds between a running trial's heartbeats; "
                                  "a trial silent for 6 of them (its worker died) is retried"),
    allow_weak_baseline: bool = typer.Option(False, "--allow-weak-baseline", help="compress a model that scores no "
                                             "better than chance or far below a linear probe on this data (refused "
                                             "by default: it usually expects differently prepared inputs)"),
) -> None:
    """Build, measure and compare candidates; write the frontier, the chosen model and the report."""
    _check_out(out_dir)
    _steady_allocator()
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .pipeline.optimize import optimize as run
    from .pipeline.results import Goal, MeasureSettings, Provenance
    from .core.progress import listening
    from .pipeline.strategies import candidates_for, load_candidates

    # settings are checked before the (slow) model and data load
    goal = Goal(metric=metric, higher_is_better=higher_is_better, max_drop=max_drop, relative=relative_drop,
                target=target, batch_size=batch_size, latency_tie=latency_tie, budget=budget)
    rts = tuple(runtimes.split(",")) if runtimes else None
    MeasureSettings(threads=threads, runtimes=rts, large_batch=large_batch or 32, repeats=repeats)
    listed = load_candidates(candidates) if candidates is not None else None
    searching = None
    if search is not None:
        from .automate.search import SearchSettings
        from .automate.space import SearchSpace

        if listed is not None and search != "grid":
            raise ConfigError(f"--candidates lists fixed candidates: search them with --search grid, not {search!r}")
        searching = SearchSettings(sampler=search, trials=trials, timeout=timeout, pruner=pruner, seed=seed,
                                   heartbeat=heartbeat,
                                   study=study, objectives=tuple(objectives.split(",")) if objectives else None,
                                   space=SearchSpace.load(space) if space is not None else None)
    elif storage is not None or space is not None:
        raise ConfigError("--storage and --space are settings of a search: add --search tpe (or grid, random, nsga2, cmaes)")
    task = _task(model, data, weights, allow_pickle, eval_limit=eval_limit)
    if large_batch is None:
        large_batch = 4 if task.kind == "causal-lm" else 32
    settings = MeasureSettings(threads=threads, runtimes=rts, large_batch=large_batch, repeats=repeats)
    goal = goal.resolve(task)
    specs = listed if listed is not None else candidates_for(strategy, task=task)
    provenance = Provenance(command="effdl " + " ".join(shlex.quote(a) for a in sys.argv[1:]), model=model, data=data)
    job_spec = {"model": model, "data": data, "weights": weights, "allow_pickle": allow_pickle, "eval_limit": eval_limit,
                "out": str(out_dir.resolve())}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=err) as bar:
        job = bar.add_task("candidates", total=len(specs) if searching is None else trials + 1)
        stage_job = bar.add_task("", total=None)

        def on_stage(stage: str, done: int, total) -> None:  # apply / train / measure <runtime> / evaluate
            bar.update(stage_job, description=f"  {stage}", completed=done, total=total)

        def on_event(ev: str, c) -> None:  # c: the CandidateSpec on "start", else the measured Candidate
            if ev == "start":
                bar.update(job, description=f"{c.id} {c.label}")
                return
            bar.advance(job)
            bar.console.print(_line(c, ev, goal.metric))

        with listening(on_stage):
            results = run(task, goal, out_dir=out_dir, candidates=specs if searching is None else listed,
                          strategy=strategy, measure=settings, provenance=provenance, on_event=on_event,
                          search=searching, storage=storage, job=job_spec, check_baseline=not allow_weak_baseline)
    _summary(results, out_dir)


@app.command()
@handled
def worker(
    study: str = typer.Option(..., "--study", help="the study's name (`effdl optimize --search ... --study NAME`)"),
    storage: str = typer.Option(..., "--storage", help="the study's storage URL: postgresql://..., journal:FILE or "
                                "sqlite:///FILE"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="where this worker writes its candidates' files "
                                           "(default: the optimize run's --out, when on this machine)"),
) -> None:
    """Join a running search: take trials of the study until its trial budget is reached.

    The model, data, goal, space and measurement settings are the ones the study was started with,
    so every worker measures alike; `effdl optimize` (or `effdl report`) writes the results."""
    _steady_allocator()
    from .automate.search import job_grid, run_search, settings_from_dict, study_job
    from .core.progress import listening
    from .metrics.measure import Tolerances
    from .pipeline.results import Goal, MeasureSettings, Provenance

    job = study_job(study, storage)
    wdir = out_dir or Path(job["out"])
    _check_out(wdir)
    task = _task(job["model"], job["data"], job["weights"], job["allow_pickle"], eval_limit=job["eval_limit"])
    goal = Goal(**job["goal"])
    m = dict(job["measure"])
    measure = MeasureSettings(**{**m, "runtimes": tuple(m["runtimes"]) if m.get("runtimes") else None,
                                 "tolerances": Tolerances(**m["tolerances"])})
    settings = settings_from_dict(job["search"])
    provenance = Provenance(command="effdl " + " ".join(shlex.quote(a) for a in sys.argv[1:]), model=job["model"],
                            data=job["data"])

    def on_event(ev: str, c) -> None:
        if ev == "start":
            err.print(f"{c.id} {c.label}", highlight=False)
        elif ev == "done":
            err.print(_line(c, ev, goal.metric), highlight=False)

    with listening(lambda stage, done, total: None):
        run_search(task, goal, out_dir=wdir, settings=settings, measure=measure, storage=storage,
                   provenance=provenance, on_event=on_event, strategy=job.get("strategy", "shrink-and-improve"),
                   candidates=job_grid(job), finish=False)
    out.print(f"worker done: study {study!r} holds its trial budget ({settings.trials})", highlight=False)


def _line(c, ev: str, metric: str) -> str:
    """One measured Candidate as a progress line."""
    tag = " (resumed)" if ev == "resumed" else ""
    if not c.ok:
        return f"  {c.id} {c.label}: [red]failed[/] — {c.reason}{tag}"
    f = c.footprint
    return (f"  {c.id} {c.label}: {metric} {c.quality[metric]:.4f}, {f.latency_ms_p50:.3f} ms "
            f"on {c.runtime}, {f.size_bytes / 1024:.1f} KiB{tag}")


def _summary(results, out_dir: Path) -> None:
    from .pipeline.summary import drop_unit, summary_rows

    metric = results.goal.metric
    table = Table(title=f"Candidates (test {metric}; latency at the goal's batch size)")
    drop_col = f"drop ({drop_unit(results.goal)})" if drop_unit(results.goal) else "drop"
    for col in ("id", "label", "runtime", metric, drop_col, "p50 ms", "size KiB", "frontier"):
        table.add_column(col)
    for row in summary_rows(results):
        table.add_row(*row)
    out.print(table)
    for line in _chosen_lines(results):
        out.print(line, highlight=False)
    out.print(f"report: {out_dir / 'report.html'}", highlight=False)


def _chosen_lines(results) -> list[str]:
    from .pipeline.summary import headline

    return headline(results)


@app.command("apply")
@handled
def apply_cmd(
    recipe: Path = typer.Argument(..., help="YAML or JSON recipe"),
    model: Optional[str] = typer.Option(None, "--model", help="overrides the recipe's model"),
    data: Optional[str] = typer.Option(None, "--data", help="overrides the recipe's data"),
    weights: Optional[str] = WEIGHTS_OPT,
    allow_pickle: bool = PICKLE_OPT,
    runtime: str = typer.Option("eager", "--runtime"),
    out_dir: Path = typer.Option(Path("runs/apply"), "--out"),
) -> None:
    """Apply a recipe to a model, measure the result and save it (safetensors + recipe JSON).

    The output directory is written as one unit: staged beside it, then renamed into place, so it
    always holds the files of one run. A measurement that fails exits 1."""
    _check_out(out_dir)
    _check_runtime(runtime, 2)
    _steady_allocator()
    from .compress.lowrank import structure_of  # pruned shapes + factorized layers
    from .core.compressed import float_reference
    from .core.errors import ConfigError
    from .core.io import replace_dir, sha256_file, write_json
    from .metrics.measure import measure
    from .pipeline.recipe import Recipe, apply_recipe

    r = Recipe.load(recipe)
    model = model or r.model
    data = data or r.data
    if not model or not data:
        raise ConfigError("name the model and data: in the recipe ('model:', 'data:') or with --model/--data")
    task = _task(model, data, weights, allow_pickle)
    result = apply_recipe(task, r)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        m = measure(task, result, runtime=runtime, workdir=staging)
        write_json(staging / "measurement.json", m)
        # layer shapes: a structurally pruned result reloads without pickle (effdl.prune.rebuild)
        write_json(staging / "structure.json", structure_of(float_reference(result)))
        files = {f: sha256_file(staging / f) for f in ("model.safetensors", "structure.json") if (staging / f).is_file()}
        write_json(staging / "recipe.json", {"base_model": model, "data": data, "steps": r.to_list(), "sha256": files})
        replace_dir(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _print_measurement(m)
    out.print(f"saved: {out_dir / 'model.safetensors'}, {out_dir / 'structure.json'}, {out_dir / 'recipe.json'}",
              highlight=False)
    _exit_if_failed(m)


@app.command()
@handled
def measure(
    model: str = MODEL_OPT,
    data: str = DATA_OPT,
    weights: Optional[str] = WEIGHTS_OPT,
    allow_pickle: bool = PICKLE_OPT,
    runtime: str = typer.Option("eager", "--runtime", help="eager | compile | ort"),
    threads: int = typer.Option(2, "--threads"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Profile a model: params, bytes, MACs, energy estimate, latency, memory and quality (exit 1 when the
    runtime fails)."""
    _check_runtime(runtime, threads)
    _steady_allocator()
    from .metrics.measure import measure as run

    task = _task(model, data, weights, allow_pickle, latency_only=True)
    m = run(task, runtime=runtime, threads=threads)
    if data.startswith("synthetic:"):
        m["quality"] = {}  # random labels: no quality figure is meaningful
        m["data"] = "synthetic (latency/size only)"
    if as_json:
        print(json.dumps(m, indent=2, default=str))
    else:
        _print_measurement(m)
    _exit_if_failed(m)


def _print_measurement(m: dict) -> None:
    table = Table(title=f"Measurement on {m['runtime']} ({m['status']})")
    table.add_column("metric")
    table.add_column("value")
    for k, v in {**m["quality"], **m["footprint"]}.items():
        if not isinstance(v, dict):  # per-batch latency gets its own rows below
            table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    for b, lat in m["runtime_result"]["latency_by_batch"].items():
        table.add_row(f"latency batch {b}", f"p50 {lat['p50_ms']:.4g} ms, p90 {lat['p90_ms']:.4g} ms, "
                      f"{lat['throughput_per_s']:.4g} items/s ({lat['threads']} threads)")
    out.print(table)
    if m["reason"]:
        err.print(f"[red]{m['reason']}[/]")


@app.command()
@handled
def report(run_dir: Path = typer.Argument(..., help="an optimize output directory")) -> None:
    """Re-render report.html and pareto.csv from a run's results.json (schema 1 files are converted)."""
    from .core.errors import ArtifactError
    from .pipeline.results import Results
    from .report import write_report

    path = run_dir / "results.json"
    if not path.is_file():
        raise ArtifactError(f"{str(path)!r} not found: pass the --out directory of an `effdl optimize` run")
    results = Results.load(path)
    paths = write_report(results, run_dir)
    out.print(f"report: {paths['html']}", highlight=False)


@app.command()
@handled
def techniques(as_json: bool = typer.Option(False, "--json")) -> None:
    """List every registered technique with its config fields, defaults and constraints."""
    from .core.registry import schema, techniques as all_

    rows = {name: {"summary": t.summary, "needs": t.needs if isinstance(t.needs, str) else "depends on config",
                   "fields": schema(t)} for name, t in all_().items()}
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    for name, info in rows.items():
        table = Table(title=f"{name} — {info['summary']} (needs: {info['needs']})", title_justify="left")
        for col in ("field", "type", "default", "constraints"):
            table.add_column(col)
        for f in info["fields"]:
            table.add_row(f["name"], str(f["type"]), json.dumps(f["default"]), json.dumps(f["constraints"]))
        out.print(table)


def _listing(title: str, rows) -> None:
    table = Table(title=title)
    table.add_column("name")
    table.add_column("description")
    for name, desc in rows:
        table.add_row(name, desc)
    out.print(table)


@app.command()
def zoo() -> None:
    """List the model zoo."""
    from .zoo import PRETRAINED_TEXT, ZOO

    _listing("zoo (use as --model zoo:<name>)", ((n, e.description) for n, e in ZOO.items()))
    _listing("pretrained text models (use as --model zoo:<name>; or hf:PATH, a local Hugging Face model folder)",
             PRETRAINED_TEXT.items())


@app.command()
def data() -> None:
    """List the bundled data sets, image/tensor and text."""
    from .data import DATASETS, TEXT_DATASETS, TEXT_PREPROCESSING

    from .data.bundled import PREPROCESSING

    _listing("bundled data (use as --data <name>; synthetic:CxHxW for latency only)",
             ((n, f"{d}. Preprocessing: {PREPROCESSING[n]}") for n, d in DATASETS.items()))
    _listing("text data (effdl.data.load_text(name); installed by `make setup`)",
             ((n, f"{d}. Preprocessing: {TEXT_PREPROCESSING[n]}") for n, d in TEXT_DATASETS.items()))


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""`effdl optimize --search` and `effdl worker` from the command line, on the real digits MLP."""
import json

import pytest
from test_cli import _assert_clean_error as _clean_error, effdl

FAST = ["--model", "zoo:mlp", "--data", "digits", "--runtimes", "eager,ort", "--repeats", "3"]


@pytest.fixture
def space(tmp_path):
    p = tmp_path / "space.yaml"
    p.write_text("- name: prune\n  technique: prune.magnitude\n  sparsity: {range: [0.1, 0.6]}\n"
                 "- name: quantize\n  optional: true\n  technique: quantize.float\n  format: bf16\n")
    return p


def test_a_search_from_the_command_line(tmp_path, space):
    out = tmp_path / "run"
    r = effdl("optimize", *FAST, "--search", "tpe", "--trials", "3", "--space", str(space), "--max-drop", "0.05",
              "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert data["search"]["sampler"] == "tpe" and data["search"]["trials"] == 3
    assert sum(c["trial"] is not None for c in data["candidates"]) == 3
    assert (out / "report.html").is_file()


def test_a_goal_no_candidate_meets_is_a_warning_not_a_crash(tmp_path):
    space = tmp_path / "harsh.yaml"  # 97-99% of the weights gone, no fine-tuning: accuracy collapses
    space.write_text("- technique: prune.magnitude\n  sparsity: {range: [0.97, 0.99]}\n")
    out = tmp_path / "run"
    r = effdl("optimize", *FAST, "--search", "random", "--trials", "2", "--space", str(space), "--max-drop", "0.001",
              "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    text = " ".join(r.stdout.split())  # only the baseline keeps its accuracy: it is chosen, with a warning
    assert "warning: no compressed candidate met the goal" in text
    assert json.loads((out / "results.json").read_text())["chosen"] == "c00"
    # a size budget (bytes) that not even the 99%-pruned file meets: nothing is chosen, the closest are named
    r = effdl("optimize", *FAST, "--search", "random", "--trials", "2", "--space", str(space), "--target", "size",
              "--budget", "10", "--out", str(tmp_path / "budget"))
    assert r.returncode == 0, r.stderr[-3000:]
    text = " ".join(r.stdout.split())
    assert "warning: no model chosen" in text and "size_bytes <= 10" in text and "the closest: t00" in text
    assert json.loads((tmp_path / "budget" / "results.json").read_text())["chosen"] is None


def test_search_settings_are_checked_before_any_work(tmp_path, space):
    out = tmp_path / "never"
    _clean_error(effdl("optimize", *FAST, "--search", "tpee", "--out", str(out)), "unknown sampler 'tpee'", "tpe")
    _clean_error(effdl("optimize", *FAST, "--search", "tpe", "--trials", "0", "--out", str(out)), "trials must be")
    _clean_error(effdl("optimize", *FAST, "--storage", "sqlite:///x.db", "--out", str(out)), "add --search")
    cands = tmp_path / "c.yaml"
    cands.write_text("- steps: []\n")
    _clean_error(effdl("optimize", *FAST, "--search", "tpe", "--candidates", str(cands), "--out", str(out)),
                 "search them with --search grid")
    empty = tmp_path / "empty.yaml"
    empty.write_text("[]\n")
    _clean_error(effdl("optimize", *FAST, "--search", "tpe", "--space", str(empty), "--out", str(out)),
                 "search space is empty")
    assert not out.exists()


def test_a_worker_needs_a_started_study(tmp_path):
    r = effdl("worker", "--study", "nope", "--storage", f"sqlite:///{tmp_path / 'study.db'}")
    _clean_error(r, "no study named 'nope'", "effdl optimize --search")


def test_an_unreachable_storage_is_named_without_its_password(tmp_path, space):
    r = effdl("optimize", *FAST, "--search", "tpe", "--space", str(space), "--out", str(tmp_path / "run"),
              "--storage", "postgresql://effdl:s3cret@127.0.0.1:1/effdl")
    _clean_error(r, "127.0.0.1:1")
    assert "s3cret" not in r.stderr + r.stdout
    r = effdl("worker", "--study", "x", "--storage", "postgresql://effdl:s3cret@127.0.0.1:1/effdl")
    _clean_error(r, "127.0.0.1:1")
    assert "s3cret" not in r.stderr + r.stdout

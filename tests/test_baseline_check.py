"""A baseline that is not a working model of its data stops the run before anything is built.

The issue was found by running a user's own CNN that scored 16.6% on effdl's standardized MNIST
(trained on differently prepared pixels); effdl fine-tuned its candidates back up and reported
gains over that broken baseline. Here a small user CNN trained on pixel values 0-255 (as read from
the image files) scores ~25% on standardized MNIST and is refused with the preprocessing named; the
same CNN trained on pixels in [0, 1] works on both ``mnist-raw`` and (robustly) ``mnist`` and is not
refused. Also: the references themselves (chance, the ridge probe, Spearman's null, the unigram LM)
against hand-computed values.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file
from torch.utils.data import TensorDataset
from test_cli import _assert_clean_error, effdl

from effdl import Goal
from effdl.core.errors import BaselineError
from effdl.core.task import QualityReference
from effdl.core.tasks import Classification
from effdl.data import load_data
from effdl.pipeline.optimize import optimize
from effdl.pipeline.sanity import baseline_problem, check_baseline

USER_MODEL = """import torch.nn as nn


def build():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 14 * 14, 10))
"""


def _user_cnn() -> nn.Module:
    ns: dict = {}
    exec(USER_MODEL, ns)
    return ns["build"]()


def _trained(scale: float, tmp_path_factory):
    """The user's CNN trained 5 epochs on MNIST pixels times ``scale`` (1: [0, 1]; 255: 0-255), its
    factory file and safetensors weights."""
    torch.manual_seed(0)
    raw = load_data("mnist-raw")
    sets = [TensorDataset(ds.tensors[0] * scale, ds.tensors[1]) for ds in (raw.train, raw.val, raw.test)]
    task = Classification(_user_cnn(), *sets, num_classes=10)
    task.train(task.model, epochs=5, lr=1e-3 if scale > 1 else 3e-3)
    assert task.evaluate(task.model, "val")["accuracy"] >= 0.85  # a working model of its own inputs
    folder = tmp_path_factory.mktemp("user")
    (folder / "model.py").write_text(USER_MODEL)
    save_file(task.model.state_dict(), str(folder / "w.safetensors"))
    return task.model.eval(), folder


@pytest.fixture(scope="module")
def unit_pixels(tmp_path_factory):
    return _trained(1.0, tmp_path_factory)


@pytest.fixture(scope="module")
def byte_pixels(tmp_path_factory):
    return _trained(255.0, tmp_path_factory)


def _task(model, data: str) -> Classification:
    s = load_data(data)
    return Classification(model, s.train, s.val, s.test, num_classes=10)


def test_a_working_model_is_not_refused(unit_pixels):
    model, _ = unit_pixels
    for data in ("mnist-raw", "mnist"):  # this CNN tolerates the standardization (~91% on both)
        task = _task(model, data)
        assert task.evaluate(model, "val")["accuracy"] >= 0.85
        check_baseline(task, Goal().resolve(task), data)  # nothing raised


def test_a_model_of_differently_prepared_pixels_is_refused_naming_the_preprocessing(byte_pixels):
    model, _ = byte_pixels
    bad = _task(model, "mnist")
    assert bad.evaluate(model, "val")["accuracy"] < 0.45  # near chance: the mismatch this check exists for
    with pytest.raises(BaselineError, match="far below a linear \\(ridge\\) probe") as info:
        check_baseline(bad, Goal().resolve(bad), "mnist")
    msg = str(info.value)
    assert "standardized with the train split" in msg and "--data mnist-raw" in msg and "factory" in msg
    assert "--allow-weak-baseline" in msg


def test_optimize_stops_before_building_any_candidate(byte_pixels, tmp_path):
    model, _ = byte_pixels
    task = _task(model, "mnist")
    with pytest.raises(BaselineError):
        optimize(task, Goal(), out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing measured, nothing written


def test_cli_refuses_with_exit_2_and_the_fix(byte_pixels, tmp_path):
    _, folder = byte_pixels
    r = effdl("optimize", "--model", f"{folder / 'model.py'}:build", "--weights", str(folder / "w.safetensors"),
              "--data", "mnist", "--out", str(tmp_path / "run"))
    _assert_clean_error(r, "validation accuracy is", "far below a linear (ridge) probe", "use --data mnist-raw",
                        "--allow-weak-baseline")
    assert not (tmp_path / "run" / "results.json").exists()


def test_the_references_against_hand_computed_values():
    # accuracy: chance is the majority share; noise its binomial standard error
    x = torch.randn(10, 1, 2, 2)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    ds = torch.utils.data.TensorDataset(x, y)
    task = Classification(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), ds, ds, ds, num_classes=3)
    ref = task.reference_quality("val")
    assert ref.chance == pytest.approx(0.4) and ref.noise == pytest.approx(math.sqrt(0.4 * 0.6 / 10))
    assert "class (0)" in ref.chance_what
    # the ridge probe separates linearly separable classes (train = val here): class = sign pattern
    xs = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]] * 5).reshape(20, 1, 1, 2)
    ys = torch.tensor([0, 0, 1, 1] * 5)
    sep = torch.utils.data.TensorDataset(xs, ys)
    t2 = Classification(nn.Sequential(nn.Flatten(), nn.Linear(2, 2)), sep, sep, sep, num_classes=2)
    assert t2.reference_quality("val").probe == 1.0


def test_the_rules():
    ref = QualityReference(chance=0.1, noise=0.015, chance_what="x", probe=0.85, probe_what="p")
    # probe rule: must keep half of the probe's 75-point gain over chance -> at least 0.475
    assert baseline_problem(ref, 0.166, True).startswith("far below p")
    assert baseline_problem(ref, 0.48, True) is None
    # chance rule: 3 standard errors (0.045) above chance
    assert "within 3 standard errors" in baseline_problem(QualityReference(0.1, 0.015, "x"), 0.14, True)
    assert baseline_problem(QualityReference(0.1, 0.015, "x"), 0.15, True) is None
    # lower is better (perplexity): must beat the unigram model
    assert baseline_problem(QualityReference(900.0, 0.0, "u"), 950.0, False).startswith("no better than u")
    assert baseline_problem(QualityReference(900.0, 0.0, "u"), 40.0, False) is None


def test_text_references():
    from effdl.core.tasks import CausalLM, SentenceEmbedding

    class Tok:  # whitespace tokenizer over a fixed vocabulary (ids 1..)
        vocab = {w: i + 1 for i, w in enumerate("a b c d".split())}

        def __call__(self, text, **_):
            if isinstance(text, str):
                return {"input_ids": [self.vocab[w] for w in text.split()]}
            ids = [[self.vocab[w] for w in t.split()] for t in text]
            return {"input_ids": ids}

    class LM(nn.Module):
        def forward(self, ids):
            return torch.zeros(*ids.shape, 5)

    text = {"train": "a a a b " * 4, "val": "a b a b", "test": "a b a b"}
    lm = CausalLM(LM(), Tok(), text, pad_id=0, seq_len=4)
    # train counts + 1/2 over ids 0..2: a 12.5, b 4.5, pad 0.5 (of 17.5); val predicts b, a, b
    p = {1: 12.5 / 17.5, 2: 4.5 / 17.5}
    want = math.exp(-(math.log(p[2]) + math.log(p[1]) + math.log(p[2])) / 3)
    assert lm.reference_quality("val").chance == pytest.approx(want, rel=1e-12)

    class Enc(nn.Module):
        def forward(self, ids):
            return ids.float()

    pairs = {s: (["a b"] * 5, ["b a"] * 5, [1.0, 2.0, 3.0, 4.0, 5.0]) for s in ("train", "val")}
    enc = SentenceEmbedding(Enc(), Tok(), pairs, pad_id=0, seq_len=2)
    ref = enc.reference_quality("val")
    assert ref.chance == 0.0 and ref.noise == pytest.approx(0.5)  # 1 / sqrt(5 - 1)

"""Models fed integer token ids (text encoders): the FP32 and INT8 runtimes keep the ids integer,
and static INT8 ignores graph outputs nobody uses (a BERT pooler next to the pooled embedding)."""
import warnings

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from effdl.compress.quantize.ptq import PTQConfig
from effdl.core.registry import apply
from effdl.core.tasks import ImageClassification
from effdl.deploy.parity import check_parity
from effdl.deploy.runtimes import lower


class TokenClassifier(nn.Module):
    """Embedding -> mean over tokens -> Linear, plus an unused pooler branch (as in BertModel)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.hidden = nn.Linear(16, 16)
        self.pooler = nn.Linear(16, 16)
        self.fc = nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.hidden(self.emb(ids).mean(1)))
        torch.tanh(self.pooler(h))  # computed, never used: dead code in the exported graph
        return self.fc(h)


class TokenTask(ImageClassification):
    """The data are int64 token ids: no float cast."""

    def example_input(self, batch_size: int = 1, split: str = "val") -> torch.Tensor:
        ds = self.splits[split]
        return torch.stack([ds[i % len(ds)][0] for i in range(batch_size)])

    def calibration_batches(self, n: int, batch_size: int = 32) -> list[torch.Tensor]:
        ds = self.splits["train"]
        return [torch.stack([ds[(k * batch_size + i) % len(ds)][0] for i in range(batch_size)]) for k in range(n)]


@pytest.fixture(scope="module")
def token_task():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (192, 8), generator=g)
    labels = ids[:, 0] % 3  # learnable from the first token
    ds = TensorDataset(ids, labels)
    torch.manual_seed(0)
    model = TokenClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):  # ImageClassification.train feeds floats: a plain loop on the ids
        opt.zero_grad()
        nn.functional.cross_entropy(model(ids), labels).backward()
        opt.step()
    return TokenTask(model.eval(), ds, ds, ds, num_classes=3)


def _inputs(task):
    return [task.example_input(1), task.example_input(32)]


def test_int64_inputs_run_on_onnx_runtime(token_task, tmp_path):
    x = token_task.example_input(4)
    assert x.dtype == torch.int64
    low = lower(token_task.model, "ort", task=token_task, workdir=tmp_path, threads=1, batch_sizes=(1, 32))
    res = check_parity(token_task.model, low, _inputs(token_task))
    assert res.ok and res.max_abs_err <= 1e-4, res.reason


@pytest.mark.parametrize("mode,runtimes", [("static", ("pt2e-int8", "ort-int8")),
                                           ("dynamic", ("torch-int8-dynamic", "ort-int8-dynamic"))])
def test_int8_of_a_token_model(token_task, tmp_path, mode, runtimes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = apply(token_task, PTQConfig(mode=mode, num_batches=2))
    if mode == "static":  # the dead pooler is gone from the graph; the live Linears are int8
        assert set(q.quantized_modules) == {"hidden", "fc"}
    for rt in runtimes:
        low = lower(q, rt, task=token_task, workdir=tmp_path / rt, threads=1, batch_sizes=(1, 32))
        res = check_parity(token_task.model, low, _inputs(token_task))
        assert res.ok and res.sqnr_db >= 20, (rt, res.reason)

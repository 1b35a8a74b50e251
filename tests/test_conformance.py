"""Every registered technique x every conformance check x every model kind it claims
(effdl.testing): a new technique gets these checks by being registered."""
import pytest
import torch

from effdl.core.registry import MODEL_KINDS, techniques
from effdl.testing import CHECKS, check_technique, invalid_values, model_kind


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the models are tiny: a second intra-op thread only adds contention on a busy machine
    # (a 32-wide decoder's forward is ~15x slower with 2 threads on 2 shared cores)
    was = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(was)


def _cases():
    for name, tech in techniques().items():
        for check in CHECKS:
            kinds = tech.models if check.per_kind else (None,)
            for kind in kinds:
                cid = f"{name}-{check.id}" + (f"-{kind}" if kind else "")
                yield pytest.param(name, check, kind, id=cid)


@pytest.mark.parametrize("name,check,kind", list(_cases()))
def test_conformance(name, check, kind):
    check(name, kind)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_model_kinds_are_real_and_fresh(kind):
    a, b = model_kind(kind), model_kind(kind)
    assert a.model is not b.model and not a.model.training
    x = a.example_input(2)
    assert x.shape[0] == 2 and a.num_examples("train") >= 8
    assert a.evaluate(a.model, "val")  # the task evaluates its own model


def test_every_technique_claims_a_known_kind():
    for name, tech in techniques().items():
        assert set(tech.models) <= set(MODEL_KINDS), name


def test_invalid_values_come_from_the_declared_constraints():
    from effdl.compress.prune.magnitude import MagnitudeConfig

    bad = invalid_values(MagnitudeConfig)
    sparsity = [v for f, v in bad if f == "sparsity"]
    assert 1.0 in sparsity  # exclusiveMaximum 1: the bound itself
    assert any(isinstance(v, float) and -1e-3 < v < 0 for v in sparsity)  # just under minimum 0
    assert ("scope", "not-a-choice") in bad and ("rounds", 0) in bad and ("rounds", 51) in bad
    assert ("rounds", 1.5) in bad and ("sparsity", "not-a-value") in bad  # wrong types


def test_check_technique_reports_a_mutating_technique():
    """A technique that writes into the caller's model fails the suite with a clear message."""
    import torch.nn as nn
    from pydantic import Field

    from effdl.core import registry
    from effdl.core.config import TechniqueConfig

    class ScaleConfig(TechniqueConfig):
        factor: float = Field(2.0, gt=0)

    def scale(model: nn.Module, cfg: ScaleConfig, task) -> nn.Module:
        """Scales the first weight in place (on the caller's model: the bug under test)."""
        target = task.model if task is not None else model
        next(target.parameters()).data.mul_(cfg.factor)
        return model

    # takes_quantized: so the first check to fail is the one under test
    registry.register("test.mutates", ScaleConfig, models=("mlp",), takes_quantized=True)(scale)
    try:
        with pytest.raises(AssertionError, match="test.mutates on mlp: the input model's .* was modified"):
            check_technique("test.mutates")
    finally:  # keep the registry as the package defines it for the other tests
        registry._BY_NAME.pop("test.mutates")
        registry._BY_TYPE.pop(ScaleConfig)

"""Every technique that must come before quantization refuses an already quantized model."""
import pytest

import effdl
from effdl.core.errors import ConfigError
from effdl.core.forms import is_quantized
from effdl.core.registry import techniques

# learn.* train the weights; the others rewrite them: all must run on the float model
BEFORE_QUANTIZATION = sorted(n for n in techniques() if n.split(".")[0] in ("prune", "lowrank", "share", "quantize", "learn"))


# configs whose defaults are incomplete on purpose (one of two fields must be chosen)
REQUIRED = {"prune.layers": {"num_blocks": 1}, "quantize.mixed": {"budget_bits_per_weight": 4.0},
            "learn.hint": {"student_layers": ("1",), "teacher_layers": ("1",)}}


@pytest.fixture(scope="module")
def int4(digits_task):
    return effdl.apply(digits_task, effdl.quantize.Weights(bits=4))


def test_quantized_forms_are_marked(int4, digits_task):
    assert is_quantized(int4) and not is_quantized(digits_task.model)


@pytest.mark.parametrize("name", BEFORE_QUANTIZATION)
def test_technique_refuses_a_quantized_model(name, int4, digits_task):
    cfg = techniques()[name].config(**REQUIRED.get(name, {}))
    with pytest.raises(ConfigError, match=r"must come before quantization.*already quantized \(WeightOnlyModel\)"):
        effdl.apply(int4, cfg, task=digits_task)

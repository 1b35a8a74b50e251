import os

import pytest
import torch

os.environ.setdefault("EFFDL_NO_REEXEC", "1")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits():
    from effdl.data import load_data

    return load_data("digits")


@pytest.fixture(scope="session")
def digits_task(digits):
    """A trained LeNet-300-100-style MLP on scikit-learn digits (real data, seconds to train)."""
    from effdl.core.tasks import ImageClassification
    from effdl.zoo import build

    torch.manual_seed(0)
    model = build("mlp", input_shape=digits.input_shape, num_classes=digits.num_classes, hidden=(64, 32))
    task = ImageClassification(model, digits.train, digits.val, digits.test, num_classes=digits.num_classes)
    task.train(model, epochs=15, lr=3e-3)
    return task

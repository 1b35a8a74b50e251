"""The built-in tasks (implementations of ``effdl.core.task.Task``)."""
from .classification import Classification, ImageClassification, classification_metrics

__all__ = ["Classification", "ImageClassification", "classification_metrics"]
from .text import CausalLM, SentenceEmbedding, TextClassification, TokenTask  # noqa: E402

__all__ += ["CausalLM", "SentenceEmbedding", "TextClassification", "TokenTask"]

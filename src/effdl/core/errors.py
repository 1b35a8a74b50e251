"""Typed errors. Every message names the problem and the fix; the CLI prints one line, exit 2."""
from __future__ import annotations

import difflib


class EffdlError(Exception):
    """Base of every error effdl raises on purpose (bad input, unsupported model, mismatch)."""


class ConfigError(EffdlError, ValueError):
    """A technique/recipe/CLI setting is invalid."""


class DataError(EffdlError, ValueError):
    """Unknown data set name, bad factory, or data of the wrong shape."""


class ModelError(EffdlError, ValueError):
    """Unknown zoo name, bad factory, or a model whose forward fails on the data."""


class UnsupportedModuleError(EffdlError, TypeError):
    """A technique or runtime cannot handle a module type."""


class NumericalMismatchError(EffdlError):
    """A lowered/rewritten model disagrees with its source beyond tolerance."""


class UnsafeArtifactError(EffdlError):
    """A file that would need unpickling, is corrupt, or escapes the output directory."""


class ArtifactError(EffdlError):
    """A weights/artifact file is missing, truncated or does not match the model."""


class BaselineError(EffdlError, ValueError):
    """The model to compress scores no better than its data supports without it (broken or mismatched)."""


def suggest(name: str, choices) -> str:
    """' Did you mean X?' for the closest valid choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""

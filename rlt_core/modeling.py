"""Model helpers that need only torch/transformers: tokenizers, tiny random models, digests, logits."""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def load_tokenizer(path: str | os.PathLike, padding_side: str = "left"):
    """Load an HF tokenizer from a local folder; make sure a pad token exists (pad != eos is not required)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_causal_lm(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Load a causal LM from a local safetensors snapshot, in eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model.to(device).eval()


def tiny_causal_lm(tokenizer, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4):
    """A random-weight Llama model (~vocab*hidden*2 + a few k params) on ``tokenizer``'s vocabulary.

    Used by tests: real forward passes, real training steps, in milliseconds.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    return model.eval()


def files_digest(paths: list[str | os.PathLike], chunk: int = 1 << 22) -> str:
    """sha256 over the bytes of ``paths`` (sorted by name), hex, first 16 chars."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()[:16]


def state_dict_digest(model: torch.nn.Module) -> str:
    """Digest of a model's weights in memory (for models that were never saved)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]

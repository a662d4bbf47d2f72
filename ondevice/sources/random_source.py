"""`model.source: random:<shape>`: a random-init model of a real model's exact shape and vocabulary.

No model hub is reachable where this pipeline is built and tested, yet the GPU path must be sized
and timed on the model users bring. Phi-3.5-mini's architecture, dimensions, LongRoPE settings and
32,064-token vocabulary are public configuration; its weights are not needed to measure time,
memory and throughput. Users with the weights give the hub id (or a folder) instead.

The tokenizer is the embedded SmolLM2 tokenizer cut to the shape's vocabulary: its first 32,064
tokens (special tokens first) and only the BPE merges that produce one of them, so every id it emits
exists in the model. Text quality is meaningless on random weights; speed and memory are not.
"""
from __future__ import annotations

import json
from pathlib import Path

from ondevice.atomic import UserError
from ondevice.sources.embedded import EMBEDDED, embedded_gguf
from ondevice.tokenizer import normalize_tokenizer

# microsoft/Phi-3.5-mini-instruct's config.json, less the weights: 3.82 B parameters.
PHI35_MINI = dict(
    architectures=["Phi3ForCausalLM"], hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=131072,
    original_max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, vocab_size=32064,
    tie_word_embeddings=False, hidden_act="silu", sliding_window=262144, bos_token_id=1, eos_token_id=32000,
    pad_token_id=32000, attention_bias=False,
    # LongRoPE: one factor per rotary frequency (head_dim 96 -> 48); random weights make the exact
    # values immaterial, the builder needs the structure (two caches, the mscale policy).
    rope_scaling={"type": "longrope",
                  "short_factor": [1.0 + 0.05 * i / 47 for i in range(48)],
                  "long_factor": [1.0 + 46.0 * (i / 47) ** 2 for i in range(48)]},
)
SHAPES = {"random:phi-3.5-mini": PHI35_MINI}


def shape_config(source: str):
    from transformers import Phi3Config

    if source not in SHAPES:
        raise UserError(f"model.source={source} is unknown; random-init shapes: {', '.join(SHAPES)}")
    return Phi3Config(**SHAPES[source])


def cut_vocabulary(tokenizer_dir: Path, size: int) -> None:
    """Keep the first `size` token ids of a byte-level BPE tokenizer and the merges that stay inside them."""
    path = Path(tokenizer_dir) / "tokenizer.json"
    tj = json.loads(path.read_text(encoding="utf-8"))
    vocab = {tok: i for tok, i in tj["model"]["vocab"].items() if i < size}
    merges = []
    for merge in tj["model"]["merges"]:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        if left in vocab and right in vocab and left + right in vocab:
            merges.append(merge)
    tj["model"]["vocab"], tj["model"]["merges"] = vocab, merges
    tj["added_tokens"] = [t for t in tj.get("added_tokens", []) if t["id"] < size]
    path.write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")


def materialize(source: str, out_dir: Path, seed: int = 0) -> dict:
    """Write the random-init float model (bf16 on disk: half the bytes, what the GPU path computes in)."""
    import torch
    from transformers import AutoTokenizer, Phi3ForCausalLM

    config = shape_config(source)
    gguf = embedded_gguf(next(iter(EMBEDDED)))
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(out_dir)
    normalize_tokenizer(out_dir)
    cut_vocabulary(out_dir, config.vocab_size)
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # initialising 3.8 B weights is minutes on a CPU
    with torch.device(device):
        model = Phi3ForCausalLM(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = AutoTokenizer.from_pretrained(out_dir).convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(out_dir)
    return {"architecture": "Phi3ForCausalLM", "parameters": sum(p.numel() for p in model.parameters()),
            "hidden_size": config.hidden_size, "num_hidden_layers": config.num_hidden_layers,
            "vocab_size": config.vocab_size, "random_init": True}

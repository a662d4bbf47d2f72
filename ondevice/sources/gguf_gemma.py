"""Gemma 3 from a llama.cpp GGUF: rebuild the tokenizer that transformers gets wrong.

What transformers 5.17 does with a gemma3 GGUF (checked on gemma-3-270m Q4_K_M):

* weights: right. Every tensor equals `gguf.quants.dequantize` of the GGUF tensor, and the
  RMSNorm weights get the `- 1` back (llama.cpp stores Gemma's `1 + w`; `Gemma2TensorProcessor`
  handles "gemma3" too). lm_head is tied to the embedding.
* config: right. hidden 640, 18 layers, 4/1 heads, head_dim 256, sliding_window 512, every 6th
  layer full attention, rope 1e6 (full) / 1e4 (sliding), query_pre_attn_scalar 256, no softcapping.
* tokenizer: WRONG, which is why greedy text degenerates ("The capital of France is" -> "is is is"):
  1. `GGUFGemmaConverter` builds a *Unigram* model from `tokenizer.ggml.scores`. Gemma 3's
     SentencePiece model is *BPE*; those scores are merge priorities (one distinct value per piece,
     down to -255504), not log-probabilities, so Viterbi prefers many short pieces:
     " capital" becomes "▁c"+"ap"+"it"+"al" (score -222) instead of "▁capital" (-4785).
  2. it sets no post-processor, so `<bos>` is never added, though the GGUF says
     `tokenizer.ggml.add_bos_token = True` and Gemma is unusable without it.
  3. the user-defined pieces ("\\n", "\\n\\n", runs of spaces/tabs, "<table>", ...) are not added
     tokens, so they are not split out the way SentencePiece and llama.cpp do.

`gemma3_tokenizer_from_gguf` rebuilds it the way llama.cpp tokenizes the same file: a BPE with
merges ordered by the GGUF scores (as transformers' own SentencePiece->BPE conversion does for the
original tokenizer.model), byte fallback, no space prefix, `<bos>` prepended, control tokens as
special added tokens and user-defined pieces as plain added tokens.

    tok = gemma3_tokenizer_from_gguf(gguf_path)          # instead of AutoTokenizer(..., gguf_file=)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)   # needs no fix
"""
from __future__ import annotations

from pathlib import Path

# llama.cpp token types (gguf.TokenType)
_NORMAL, _CONTROL, _USER_DEFINED, _BYTE = 1, 3, 4, 6


def is_gemma3_gguf(gguf_path: str | Path) -> bool:
    """general.architecture == "gemma3" (parses the whole GGUF header: ~10 s for a 262k vocab)."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf_path)).fields.get("general.architecture")
    return field is not None and field.contents() == "gemma3"


def _read_vocab(gguf_path: str | Path):
    """(tokens, scores, types, metadata) straight from the GGUF fields (fast: no per-token parsing)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf_path)).fields
    if fields["tokenizer.ggml.model"].contents() != "llama":
        raise ValueError(f"{gguf_path}: expected a SentencePiece ('llama') vocabulary")
    f = fields["tokenizer.ggml.tokens"]
    tokens = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    f = fields["tokenizer.ggml.scores"]
    scores = [float(f.parts[i][0]) for i in f.data]
    f = fields["tokenizer.ggml.token_type"]
    types = [int(f.parts[i][0]) for i in f.data]
    meta = {k.removeprefix("tokenizer.ggml."): fields[k].contents() for k in fields
            if k.startswith("tokenizer.ggml.") and k.endswith(("_token_id", "add_bos_token", "add_eos_token"))}
    return tokens, scores, types, meta


def gemma3_tokenizer_from_gguf(gguf_path: str | Path):
    """A `GemmaTokenizer` (BPE, byte fallback, `<bos>` prepended) equivalent to llama.cpp's on this GGUF.

    ~12 s on 2 busy cores (mostly GGUFReader parsing the 262k-entry arrays; merges take ~2 s); the
    stock `AutoTokenizer.from_pretrained(..., gguf_file=)` takes ~35 s. Saved with `save_pretrained`
    it is a normal Gemma tokenizer.json (BPE + merges, tokenizer_class GemmaTokenizer); transformers 5
    does not write `add_bos_token` to tokenizer_config.json, the `<bos>` lives in the tokenizer.json
    post_processor (TemplateProcessing "<bos> $A").
    """
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import generate_merges
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer

    tokens, scores, types, meta = _read_vocab(gguf_path)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    # Only normal pieces take part in BPE merges; the merge that makes a higher-scored piece goes first.
    normal = {tok: i for i, tok in enumerate(tokens) if types[i] == _NORMAL}
    merges = generate_merges(normal, [(tok, scores[i]) for tok, i in normal.items()])

    def tok_name(key: str, default: str) -> str:
        return tokens[meta[key]] if key in meta else default

    tokenizer = GemmaTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=tok_name("unknown_token_id", "<unk>"),
        bos_token=tok_name("bos_token_id", "<bos>"),
        eos_token=tok_name("eos_token_id", "<eos>"),
        pad_token=tok_name("padding_token_id", "<pad>"),
        mask_token="<mask>",
        add_bos_token=bool(meta.get("add_bos_token", True)),
        add_eos_token=bool(meta.get("add_eos_token", False)),
    )
    # Pieces that SentencePiece/llama.cpp match as a whole before BPE: control tokens (special,
    # e.g. <start_of_turn>) and user-defined ones (plain text such as "\n\n", "    ", "<table>").
    added = [AddedToken(tok, special=types[i] == _CONTROL, normalized=False)
             for i, tok in enumerate(tokens) if types[i] in (_CONTROL, _USER_DEFINED)]
    tokenizer.add_tokens(added)
    assert len(tokenizer) == len(tokens), (len(tokenizer), len(tokens))
    return tokenizer


def check_gemma3_from_gguf(model, gguf_path: str | Path) -> None:
    """Cheap sanity check of a gemma3 model loaded with `gguf_file=` against the GGUF metadata.

    The transformers 5.17 loader passes it; kept so that a future transformers regression (config
    or the norm `w - 1`) fails loudly instead of producing fluent-looking garbage.
    """
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(gguf_path))
    meta = {k: reader.fields[k].contents() for k in reader.fields if k.startswith("gemma3.")}
    c = model.config
    want = {"hidden_size": meta["gemma3.embedding_length"], "num_hidden_layers": meta["gemma3.block_count"],
            "num_attention_heads": meta["gemma3.attention.head_count"],
            "num_key_value_heads": meta["gemma3.attention.head_count_kv"],
            "head_dim": meta["gemma3.attention.key_length"], "intermediate_size": meta["gemma3.feed_forward_length"],
            "sliding_window": meta["gemma3.attention.sliding_window"]}
    bad = {k: (getattr(c, k), v) for k, v in want.items() if getattr(c, k) != v}
    full = (c.rope_parameters.get("full_attention") or {}).get("rope_theta")
    if full != meta["gemma3.rope.freq_base"]:
        bad["rope_theta(full)"] = (full, meta["gemma3.rope.freq_base"])
    tensors = {t.name: t for t in reader.tensors}
    t = tensors["output_norm.weight"]
    gguf_norm = torch.from_numpy(dequantize(t.data, t.tensor_type).reshape(-1).copy())
    if not torch.allclose(model.model.norm.weight.detach().float().cpu(), gguf_norm - 1, atol=1e-5):
        bad["model.norm.weight"] = "is not GGUF weight - 1"
    if bad:
        raise ValueError(f"gemma3 GGUF loaded wrongly by transformers: {bad}")

"""Tokenizer files (eos token, normalisation for onnxruntime-genai, copy), apart so an edit reruns only their stages."""
from __future__ import annotations

import json
import shutil
import weakref
from pathlib import Path

_EOS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> its end-of-turn token


def eos_token(tokenizer) -> str:
    """The token that ends an assistant turn: <|im_end|> for ChatML models, else the tokenizer's eos.
    Kept per tokenizer (and its template): get_vocab() builds a dict of the whole vocabulary, 24 ms a
    call, and every chat row asks (7.6 of the data stage's 17 s on 322 rows)."""
    template = tokenizer.chat_template or ""
    known = _EOS.get(tokenizer)
    if known is None or known[0] != template:
        vocab = tokenizer.get_vocab()
        ends = [tok for tok in ("<|im_end|>", "<|end|>", "<|eot_id|>") if tok in vocab and tok in template]
        known = _EOS[tokenizer] = (template, ends[0] if ends else None)
    return known[1] or tokenizer.eos_token


def normalize_tokenizer(folder: Path) -> None:
    """Make the tokenizer files loadable by onnxruntime-genai and consistent with the chat format.

    GGUF-converted tokenizers carry llama-style byte-fallback pieces on a GPT-2 byte-level BPE,
    which onnxruntime-genai's tokenizer turns into id -1 for every space and newline; and
    transformers 5 writes `tokenizer_class: TokenizersBackend`, which older runtimes reject.
    """
    folder = Path(folder)
    tj_path, tc_path = folder / "tokenizer.json", folder / "tokenizer_config.json"
    tj = json.loads(tj_path.read_text(encoding="utf-8"))
    tc = json.loads(tc_path.read_text(encoding="utf-8"))
    byte_level = (tj.get("pre_tokenizer") or {}).get("type") == "ByteLevel"
    if byte_level and tj["model"].get("type") == "BPE":
        tj["normalizer"] = None
        tj["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        tj["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
        tj["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
        tj["model"].update(byte_fallback=False, fuse_unk=False)
        tj_path.write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    if tc.get("tokenizer_class") in (None, "TokenizersBackend", "PreTrainedTokenizerFast"):
        tc["tokenizer_class"] = "GPT2Tokenizer" if byte_level else "LlamaTokenizerFast"
    template = tc.get("chat_template") or ""
    if not template and (folder / "chat_template.jinja").exists():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if "<|im_end|>" in template and "<|im_start|>" in template:
        # ChatML: the turn ends with <|im_end|>; GGUF metadata sometimes names <|im_start|> as eos.
        tc.update(bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>")
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            tc.pop(key, None)
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False), encoding="utf-8")


def copy_tokenizer(src: Path, dst: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (Path(src) / name).exists():
            shutil.copy2(Path(src) / name, Path(dst) / name)

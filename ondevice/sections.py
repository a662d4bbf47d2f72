"""The params.yaml schema: one typed model per section, each field's type and allowed values or range
declared beside it. `ondevice.params` loads and checks a file against them; a stage's `run` gets its
section as one of these objects (see Section)."""
from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

Algorithm = Literal["awq", "rtn", "gptq"]
Device = Literal["auto", "cpu", "cuda"]
Provider = Literal["cpu", "cuda"]
LlamaType = Literal["Q4_0", "Q4_1", "Q8_0", "Q4_K_M", "Q5_K_M"]  # ondevice.measure.gguf_peer.FTYPES
GroupSize = Literal[16, 32, 64, 128, 256]
LoraTarget = Literal["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                     "qkv_proj", "gate_up_proj"]  # the last two: fused projections of Phi-3
ALGORITHMS, DEVICES, LORA_TARGETS = get_args(Algorithm), get_args(Device), get_args(LoraTarget)
ADAPTER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Workspace coordinates only: credentials never go in params.yaml (DefaultAzureCredential finds them).
AZURE_KEYS = ("subscription_id", "resource_group", "workspace")


def span(lo=None, hi=None):
    return Field(ge=lo, le=hi)


class Section(BaseModel):
    """One params.yaml section, checked. A stage's `run(inputs..., out_dir, cfg)` gets its section as
    this typed object (`section()`, `adapter()` below). It also reads as a read-only mapping
    (`cfg["r"]`, `{**cfg}`), so helpers that studies and tests call with plain dicts take either."""
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    def __getitem__(self, key: str):
        return getattr(self, key)

    def keys(self):
        return type(self).model_fields.keys()


class Model(Section):
    source: str


class Data(Section):
    eval_fraction: Annotated[float, span(0.01, 0.9)]
    seed: Annotated[int, span(0)]


class Quantize(Section):
    algorithm: Algorithm
    group_size: GroupSize
    symmetric: bool
    calibration_samples: Annotated[int, span(1, 4096)]
    calibration_seq_len: Annotated[int, span(16, 8192)]
    awq_grid: Annotated[int, span(2, 100)]
    awq_clip: bool
    awq_clip_grid: Annotated[int, span(2, 100)]
    awq_clip_max_shrink: Annotated[float, span(0.0, 0.95)]
    awq_gptq: bool
    awq_gptq_damp: Annotated[float, span(0.0, 10.0)]
    head_block_size: GroupSize
    head_gptq: bool  # awq / gptq: the head rounded by GPTQ on the int4 decoder's output (rtn: to nearest)
    head_gptq_damp: Annotated[float, span(0.0, 10.0)]
    int8_modules: list[LoraTarget]  # decoder projections kept at 8 bits (MatMulNBits bits=8); [] = all int4
    device: Device
    calibration: str


class Reference(Section):
    algorithms: list[Algorithm]  # may be empty: no reference


class Finetune(Section):
    r: Annotated[int, span(1, 512)]
    alpha: Annotated[float, span(0.0)]
    dropout: Annotated[float, span(0.0, 0.9)]
    target_modules: Annotated[list[LoraTarget], Field(min_length=1)]
    lr: Annotated[float, span(1e-7, 1.0)]
    max_steps: Annotated[int, span(1)]
    batch_size: Annotated[int, span(1, 1024)]
    seq_len: Annotated[int, span(16)]
    seed: Annotated[int, span(0)]
    template: str
    device: Device
    cpu_bf16: Literal["auto"] | bool
    length_windows: Annotated[int, span(0, 1000)]
    attention: Literal["auto", "eager", "sdpa"]


class Optimize(Section):
    provider: Provider
    int4_accuracy_level: Literal["auto", 0, 1, 2, 3, 4]
    min_top1_agreement: Annotated[float, span(0.0, 1.0)]
    auto_level_rows: Annotated[int, span(1)]
    prune_lm_head: bool
    intra_op_threads: Annotated[int, span(0, 256)]
    cuda_graph: bool
    lora_targets: Annotated[list[LoraTarget], Field(min_length=1)]


class Evaluate(Section):
    max_rows: Annotated[int, span(1)]
    generate_rows: Annotated[int, span(0)]
    max_new_tokens: Annotated[int, span(1, 4096)]
    device: Device
    guard_rows: Annotated[int, span(0)]


class Benchmark(Section):
    prompt_tokens: Annotated[int, span(1, 8192)]
    new_tokens: Annotated[int, span(1, 8192)]
    runs: Annotated[int, span(1, 100)]
    warmup: Annotated[int, span(0, 20)]
    threads: Annotated[int, span(0, 256)]
    torch_baseline: bool
    torch_runs: Annotated[int, span(1, 100)]
    switches: Annotated[int, span(1, 10000)]
    context_lengths: Annotated[list[Annotated[int, span(1, 32768)]], Field(min_length=1)]
    thread_counts: Annotated[list[Annotated[int, span(1, 256)]], Field(min_length=1)]
    sweep_new_tokens: Annotated[int, span(2, 4096)]
    profile: bool
    llama_cpp: bool
    llama_cpp_types: Annotated[list[LlamaType], Field(min_length=1)]  # llama.cpp's quantizer types
    builder_reference: bool


class Register(Section):
    name: str
    version: Annotated[int, span(1)]
    description: str
    license: str
    azure: dict


class AzureJob(Section):
    compute: str
    experiment_name: str
    environment: str
    remote: str
    stages: list


SECTIONS: dict[str, type[Section] | None] = {  # adapters: name -> {data, any finetune key}, checked below
    "model": Model, "data": Data, "quantize": Quantize, "reference": Reference, "finetune": Finetune,
    "adapters": None, "optimize": Optimize, "evaluate": Evaluate, "benchmark": Benchmark, "register": Register,
    "azure_job": AzureJob}


class AdapterOverrides(Finetune):
    """adapters.NAME: a data file plus any finetune key, each checked as in finetune."""
    data: str


class AdapterConfig(AdapterOverrides):
    """One adapter's effective settings (the finetune defaults overridden by adapters.NAME) and its name:
    the cfg of the data@, finetune@, float_lora@ and adapter@ stages."""
    name: str

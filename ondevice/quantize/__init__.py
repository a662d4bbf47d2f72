"""The quantize step: float HF folder -> Olive `olive`-format int4 checkpoint (int8 where
`int8_modules` says so).

rtn and gptq run Olive's own passes through its Python API (`olive.run`); awq runs our AWQ
(ondevice.quantize.awq) on Olive's layer-wise utilities and writes with Olive's `finalize`.
Whatever the algorithm, the embedding / lm_head is rounded here too, on the grid the ONNX builder
gives it (ondevice.quantize.head), so the checkpoint holds every weight exactly as it will ship.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from ondevice.checkpoint import pick_device, quantization_config
from ondevice.quantize.bits import BITS, INT8_BITS
from ondevice.text import row_text


def calibration_ids(tokenizer, template: str, train_rows: list[dict], samples: int, seq_len: int,
                    seed: int = 0) -> torch.Tensor:
    """Pack `samples` train rows (rendered as the model will see them) into [n, seq_len] blocks."""
    rows = list(train_rows)
    random.Random(seed).shuffle(rows)
    stream: list[int] = []
    for row in rows[:samples]:
        stream += tokenizer(row_text(tokenizer, template, row), add_special_tokens=False)["input_ids"]
    n = max(1, len(stream) // seq_len)
    if len(stream) < seq_len:  # tiny data: one short block
        return torch.tensor([stream])
    return torch.tensor(stream[: n * seq_len]).reshape(n, seq_len)


def calibration_for(params: dict, base: Path, train_path: Path) -> torch.Tensor:
    """The calibration blocks params.yaml asks for: `quantize.calibration`'s train rows, rendered in
    that adapter's template (what the model will see), packed as calibration_ids does."""
    from transformers import AutoTokenizer

    from ondevice import params as P
    from ondevice.data import read_jsonl

    q = params["quantize"]
    template = P.adapter_config(params, q["calibration"])["template"]
    return calibration_ids(AutoTokenizer.from_pretrained(base), template, read_jsonl(train_path),
                           q["calibration_samples"], q["calibration_seq_len"], seed=params["data"]["seed"])


def int8_names(float_dir: Path, modules: list[str]) -> list[str]:
    """The full names of the decoder projections that `quantize.int8_modules` keeps at 8 bits, read
    from the checkpoint's tensor names (no weights loaded); one line if the model has no such projection."""
    import re

    from safetensors import safe_open

    from ondevice.atomic import UserError

    names = set()
    for file in sorted(Path(float_dir).glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            names |= {k[: -len(".weight")] for k in f.keys() if re.search(r"\.layers\.\d+\..+_proj\.weight$", k)}
    found = {m: sorted(n for n in names if n.rsplit(".", 1)[-1] == m) for m in modules}
    missing = [m for m, hits in found.items() if not hits]
    if missing:
        kinds = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise UserError(f"params.yaml: quantize.int8_modules names {', '.join(missing)}, which this model does not "
                        f"have; its decoder projections are {', '.join(kinds)}")
    return sorted(n for hits in found.values() for n in hits)


STORED_BITS = {"F32": 32, "I32": 32, "F16": 16, "BF16": 16, "U8": 8, "I8": 8}  # safetensors dtype -> bits


def bits_per_weight(folder: Path) -> float:
    """Storage bits per weight of the quantized projections: their integer codes, scales and zero
    points over the weights they hold (4-bit codes at group 32 with fp32 scales: 5.125)."""
    from safetensors import safe_open

    qc = quantization_config(folder)
    stored, weights = 0, 0
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for name in f.keys():
                if not name.endswith((".qweight", ".scales", ".qzeros")):
                    continue
                t = f.get_slice(name)
                rows, cols = t.get_shape()
                stored += rows * cols * STORED_BITS[t.get_dtype()]
                if name.endswith(".qweight"):  # uint8 codes packed along the columns
                    bits = (qc.get("overrides") or {}).get(name[: -len(".qweight")], {}).get("bits", qc["bits"])
                    weights += rows * cols * 8 // bits
    return round(stored / weights, 3)


def _olive_pass(float_dir: Path, pass_config: dict, work: Path) -> Path:
    from olive import run

    out = run({
        "input_model": {"type": "HfModel", "model_path": str(float_dir)},
        "passes": {"q": pass_config},
        "output_dir": str(work / "olive_out"),
        "cache_dir": str(work / "olive_cache"),
        "log_severity_level": 3,
    })
    if not out.has_output_model():
        raise RuntimeError(f"Olive pass {pass_config['type']} produced no model")
    return Path(out.get_best_candidate().model_path)


def _write_calibration_json(path: Path, ids: torch.Tensor) -> None:
    path.write_text(json.dumps(ids.tolist()))


def run(base: Path, calib: torch.Tensor | None, out_dir: Path, cfg) -> dict:
    """The quantize stage: the float base in `base` quantized as cfg (a params.Quantize) says, with the
    calibration blocks `calib` (calibration_for), into the empty folder out_dir; returns its metrics."""
    import tempfile

    with tempfile.TemporaryDirectory() as work:  # Olive's working copies
        return quantize(base, out_dir, cfg, calib, Path(work))


def quantize(float_dir: Path, out_dir: Path, q: dict, calib: torch.Tensor, work: Path) -> dict:
    """Quantize float_dir into out_dir (an empty dir) with params `q`; return metrics.

    The int4 grid has one home, here: the layers' group size and symmetry and the head's block
    (`head_block_size`, which the ONNX builder quantizes the float head with) go into the
    checkpoint's quantization_config, and optimize reads them there, so the two cannot disagree.
    """
    import shutil

    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    device = pick_device(q["device"])
    algo = q["algorithm"]
    # mixed precision: Olive's per-module overrides, which its packing, our loader and the builder all read
    overrides = {name: {"bits": INT8_BITS} for name in int8_names(float_dir, q["int8_modules"])}
    if algo == "rtn":
        produced = _olive_pass(float_dir, {"type": "Rtn", "bits": BITS, "group_size": q["group_size"],
                                           "sym": q["symmetric"], "overrides": overrides}, work)
    elif algo == "gptq":
        calib_file = work / "calibration.json"
        _write_calibration_json(calib_file, calib)
        produced = _olive_pass(float_dir, {
            "type": "Gptq", "bits": BITS, "group_size": q["group_size"], "sym": q["symmetric"], "overrides": overrides,
            "data_config": {
                "name": "travel_calibration",
                "type": "DataContainer",
                "user_script": str(Path(__file__).with_name("olive_data.py")),
                "load_dataset_config": {"type": "token_blocks", "path": str(calib_file)},
                "pre_process_data_config": {"type": "identity_pre_process"},
                "dataloader_config": {"batch_size": 1},
            },
        }, work)
    elif algo == "awq":
        from olive.common.quant.hf_utils import OliveHfQuantizationConfig
        from olive.model import HfModelHandler
        from olive.passes.pytorch.quant_utils import finalize

        from ondevice.quantize.awq import AwqConfig, awq

        model = AutoModelForCausalLM.from_pretrained(float_dir, dtype=torch.float32)
        if device == "cuda":
            model = model.to(torch.bfloat16)  # GPU path: bf16 activations, fp32 statistics
        wrapper = awq(model, calib, AwqConfig.from_params(q), device=device, int8=set(overrides))
        wrapper.model.to(torch.float32)
        qcfg = OliveHfQuantizationConfig(bits=BITS, symmetric=q["symmetric"], group_size=q["group_size"],
                                         lm_head=False, embeds=False, overrides=overrides)
        produced = work / "awq_model"
        finalize(HfModelHandler(model_path=str(float_dir)), str(produced), wrapper, qcfg, device)
    else:
        raise ValueError(algo)
    for item in produced.iterdir():
        if item.is_file():
            shutil.copy2(item, out_dir / item.name)
    from ondevice.quantize.head import head_input_gram, round_head
    from ondevice.tokenizer import copy_tokenizer

    copy_tokenizer(float_dir, out_dir)
    # rtn stays calibration-free (the reference stage's baseline): its head is rounded to nearest
    head_gram = head_input_gram(out_dir, calib, device) if q["head_gptq"] and algo != "rtn" else None
    round_head(out_dir, q["head_block_size"], head_gram, q["head_gptq_damp"], device)
    seconds = time.perf_counter() - t0
    config = json.loads((out_dir / "config.json").read_text())
    config["quantization_config"]["algorithm"] = algo  # provenance, read by evaluate/register
    config["quantization_config"]["head_block_size"] = q["head_block_size"]  # the block optimize packs the head in
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return {"algorithm": algo, "seconds": round(seconds, 2), "device": device,
            "calibration_tokens": 0 if calib is None else int(calib.numel()), "bits": BITS,
            "group_size": q["group_size"], "int8_projections": len(overrides),
            "bits_per_weight": bits_per_weight(out_dir), "machine": machine(device)}


def machine(device: str) -> dict:
    """What computed the model: the same params give int4 codes that differ in a few ties on another
    CPU kind or kernel set (README "Same params, another machine"), so the metrics say which one."""
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    out = {"cpu": cpu, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "torch_threads": torch.get_num_threads()}
    if device == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)
    return out

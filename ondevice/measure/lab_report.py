"""`make repro-lab`'s record (reports/lab/): the machine, the stages' metrics, and the lab's goals.

The Olive lab quantizes and finetunes Phi-3.5-mini on an A100, builds it with `olive auto-opt` for
the CPU and runs its app there. This gathers one run of that flow (the Makefile's LAB_PROFILE) into
one folder: card.txt names the GPU and the CPU, benchmark.json is the CPU benchmark stage's metrics
(llama.cpp's GGUFs of the same float base in the same rounds), summary.json holds the goals of
issue #29 beside what the run measured, and our stage times beside the lab's own A100 figures.
timed_repro writes repro.json and stage_seconds.json into the same folder.
"""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
from pathlib import Path

# the lab's stage times on its A100, as its notebook reports them (minutes)
LAB_A100_S = {"quantize": 8 * 60, "finetune": 6 * 60, "optimize": 5 * 60}
GOALS = {"adapter_vs_llama_cpp": 1.2, "adapter_decode_cost_pct_max": 10.0, "roofline_fraction_adapter": 0.7}


def card() -> str:
    """The GPU (if any), the CPU and its vector extensions, memory, and the engines' versions."""
    from ondevice.ship.model_card import cpu_model

    lines = []
    if shutil.which("nvidia-smi"):
        lines.append("GPU: " + subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                               "--format=csv,noheader", "-i", "0"],
                                              capture_output=True, text=True).stdout.strip())
    flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split()
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    lines += [f"CPU: {cpu_model()}, {os.cpu_count()} CPUs, {' '.join(isa)}", f"memory: {mem_kb / 2**20:.0f} GiB"]
    for name in ("torch", "onnxruntime", "onnxruntime-genai", "dvc"):
        try:
            lines.append(f"{name}: {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    try:  # the build's own account of the CPU features it was compiled for
        import llama_cpp

        lines.append(f"llama-cpp-python {llama_cpp.__version__}: "
                     + llama_cpp.llama_print_system_info().decode().strip())
    except ImportError:
        pass
    return "\n".join(lines) + "\n"


def summarize(metrics: dict, stages_s: dict) -> dict:
    """The goals against the run, and our stage seconds beside the lab's A100 minutes."""
    bench = metrics["benchmark"]
    goals = {k: {"goal": v, "measured": bench.get(k),
                 "met": bench.get(k) is not None and (bench[k] <= v if k.endswith("_pct_max") else bench[k] >= v)}
             for k, v in GOALS.items()}
    ours = {"quantize": stages_s.get("quantize"),
            "finetune": max((s for k, s in stages_s.items() if k.startswith("finetune@")), default=None),
            "optimize": stages_s.get("optimize")}
    return {"goals": goals, "base_vs_llama_cpp": bench.get("base_vs_llama_cpp"),
            "vs_llama_cpp": bench.get("vs_llama_cpp"), "stage_s_vs_lab_a100": {
                k: {"ours_s": ours[k], "lab_a100_s": LAB_A100_S[k]} for k in LAB_A100_S},
            "note": "finetune: our slowest adapter (100 steps); the lab's optimize is `olive auto-opt`"}

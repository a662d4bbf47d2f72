"""CPU threads per job when several pipeline runs share one machine (`make sweep`, `dvc queue start -j N`).

Alone, every stage uses every core (PyTorch's and onnxruntime's defaults). N queued experiments
running at once would each do the same and fight over the cores, so the sweep starts DVC's queue
workers with the cores split between them: OMP_NUM_THREADS / MKL_NUM_THREADS (PyTorch's intra-op
pool reads them when it starts, so quantize, finetune and evaluate's PyTorch scoring follow without
code changes) and ONDEVICE_THREADS, the same number for code that sizes an onnxruntime session
itself (`count()`). The workers pass their environment on to every stage they run.
"""
from __future__ import annotations

import os

from ondevice.atomic import UserError

ENV = "ONDEVICE_THREADS"
PASSED_ON = (ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def per_job(jobs: int, cpus: int | None = None) -> int:
    """Cores for each of `jobs` concurrent runs: the machine's cores split evenly, at least one."""
    return max(1, (cpus or os.cpu_count() or 1) // max(1, jobs))


def environ(jobs: int, cpus: int | None = None) -> dict[str, str]:
    """The variables that make every stage of `jobs` concurrent runs use its share of the cores."""
    n = str(per_job(jobs, cpus))
    return dict.fromkeys(PASSED_ON, n)


def count(environ: dict | None = None) -> int:
    """$ONDEVICE_THREADS as a number of threads; 0 = not set (use the library's default, every core)."""
    raw = (os.environ if environ is None else environ).get(ENV, "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"${ENV}={raw!r} must be a whole number of threads, at least 1 (or unset: every core)")
    return int(raw)

"""The reference stage: the base quantized again by each reference algorithm, with the rest of
`quantize:` unchanged, so evaluate can show what our algorithm gains in every run's metrics."""
from __future__ import annotations

from pathlib import Path

from ondevice import quantize


def run(base: Path, calib, quantize_cfg, out_dir: Path, cfg) -> dict:
    """cfg: params.Reference (its algorithms, maybe none); quantize_cfg: params.Quantize, the settings
    every reference shares with the shipped model. One folder per algorithm in out_dir."""
    seconds = {}
    for algorithm in cfg.algorithms:
        (out_dir / algorithm).mkdir()
        same_but_algorithm = quantize_cfg.model_copy(update={"algorithm": algorithm})
        seconds[algorithm] = quantize.run(base, calib, out_dir / algorithm, same_but_algorithm)["seconds"]
    return {"algorithms": list(seconds), "seconds": seconds}

"""The register step's manifest: what was built, from what, with what, and how well it does."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
from pathlib import Path

PINNED = ("torch", "transformers", "olive-ai", "onnxruntime", "onnxruntime-genai", "onnx", "onnx-ir", "peft",
          "dvc", "azure-ai-ml", "click")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_versions() -> dict:
    out = {}
    for name in PINNED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def params_hash(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


CARD = "README.md"  # the model card's name in the shipped folder (reports/model_card.md in the repository)


def bundle_files(onnx_dir: Path, adapters_dir: Path, card: Path | None = None) -> dict[str, Path]:
    """What ships, by its path in the shipped folder: the ONNX model, adapters/NAME.onnx_adapter and
    the model card as README.md."""
    files = {str(p.relative_to(onnx_dir)): p for p in sorted(Path(onnx_dir).rglob("*")) if p.is_file()}
    files.update({f"adapters/{p.name}": p for p in sorted(Path(adapters_dir).glob("*.onnx_adapter"))})
    if card is not None:
        files[CARD] = Path(card)
    return files


def make_bundle(onnx_dir: Path, adapters_dir: Path, dest: Path, card: Path | None = None) -> Path:
    """The shipped folder, as hard links where the filesystem allows (no 100 MB copy)."""
    import os
    import shutil

    for rel, src in bundle_files(onnx_dir, adapters_dir, card).items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, target)
        except OSError:
            shutil.copy2(src, target)
    return dest


def manifest(onnx_dir: Path, adapters_dir: Path, params: dict, metrics: dict, card: Path | None = None) -> dict:
    files = {rel: {"sha256": sha256(p), "bytes": p.stat().st_size}
             for rel, p in bundle_files(onnx_dir, adapters_dir, card).items()}
    return {
        "name": params["register"]["name"],
        "version": params["register"]["version"],
        "description": params["register"]["description"],
        "path": str(onnx_dir),
        "adapters": sorted(params["adapters"]),
        "files": files,
        "params": params,
        "params_hash": params_hash(params),
        "metrics": metrics,
        "packages": package_versions(),
        "git_commit": git_commit(),
    }


def read_metrics(metrics_dir: Path, names: list[str], which=("data", "quantize", "optimize", "adapter", "evaluate"),
                 optional=()) -> dict:
    """The stages' metrics files under metrics_dir (a folder: one file per adapter); `optional` ones may
    be missing (None)."""
    out = {}
    for name in (*which, *optional):
        path = metrics_dir / name
        if path.is_dir():
            out[name] = {n: json.loads((path / f"{n}.json").read_text()) for n in names}
        elif name in optional and not path.with_suffix(".json").exists():
            out[name] = None
        else:
            out[name] = json.loads(path.with_suffix(".json").read_text())
    return out


def run(onnx_dir: Path, adapters_dir: Path, metrics_dir: Path, params: dict, card: Path, cfg) -> dict:
    """The register stage: the model card (written to `card`, shipped as README.md) and the manifest of
    the shipped model, returned: file hashes, the params it was made with, the model's metrics,
    package versions. cfg: the params.Register section; the manifest records the whole params (this
    section included), so it reads them there."""
    from ondevice.atomic import write_text
    from ondevice.ship.model_card import render

    names = list(params["adapters"])
    # The manifest holds model facts only: benchmark and training times describe a machine, not the
    # model. The card also gives the speed, and names the machine: re-benchmarking rewrites the card
    # (and so its hash in the manifest), nothing else.
    metrics = read_metrics(metrics_dir, names)
    extra = read_metrics(metrics_dir, names, which=(), optional=("benchmark", "model"))
    write_text(card, render(params, {**metrics, **extra}))
    return manifest(onnx_dir, adapters_dir, params, metrics, card=card)

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


def manifest(model_dir: Path, params: dict, metrics: dict) -> dict:
    files = {str(p.relative_to(model_dir)): {"sha256": sha256(p), "bytes": p.stat().st_size}
             for p in sorted(model_dir.rglob("*")) if p.is_file()}
    return {
        "name": params["register"]["name"],
        "version": params["register"]["version"],
        "description": params["register"]["description"],
        "path": str(model_dir),
        "files": files,
        "params": params,
        "params_hash": params_hash(params),
        "metrics": metrics,
        "packages": package_versions(),
        "git_commit": git_commit(),
    }

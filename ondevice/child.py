"""Run a function in a fresh Python process: its peak memory is its own, and a crash stays there.

`in_child(fn, **kwargs)` runs `fn(**kwargs)` (a module-level function, JSON arguments, a JSON-able
dict result) as `python -m ondevice.child MODULE:FUNCTION ARGS` and returns the result plus the
child's peak RSS. The benchmark runs every engine this way, so engines are plain functions.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{key}:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: Linux carries that
    across exec, so a child would report its parent's peak."""
    return _status_mb("VmHWM")


def rss_mb() -> float:
    """This process's resident memory now (VmRSS)."""
    return _status_mb("VmRSS")


def in_child(fn, *, path_first: str | None = None, **kwargs) -> dict:
    """path_first: a package folder searched before everything else in the child (the CUDA serving
    runtime, another onnxruntime-genai than the one this process imported)."""
    cmd = [sys.executable, "-m", "ondevice.child", f"{fn.__module__}:{fn.__name__}", json.dumps(kwargs)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [path_first,
                                                                     str(Path(__file__).resolve().parent.parent),
                                                                     os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{fn.__module__}.{fn.__name__} failed in its child process:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(target: str, args: str) -> None:
    module, name = target.split(":")
    out = getattr(importlib.import_module(module), name)(**json.loads(args))
    print(json.dumps({**out, "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Write outputs so that a crash never leaves a half-written artefact where DVC would cache it.

Every stage builds its outputs in a sibling temp directory and renames it into place; a reader
(or `dvc repro`) sees either the previous complete output or the new complete output.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike):
    """Yield a temp dir next to `final`; on success replace `final` with it, on error delete it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # A run killed with SIGKILL leaves its temp dir behind; the next run clears it first.
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.rename(final, old)
        os.rename(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    """Rows of dicts (same keys, in order) as a CSV with a header: what `dvc plots` reads."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def write_json(path: str | os.PathLike, obj) -> None:
    """Metrics as DVC reads them. A NaN or infinity is refused, never written as a number: a run that
    produced one has a broken model or adapter somewhere, and must not ship (register reads these)."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
    except ValueError:
        key = _non_finite_key(obj)
        raise UserError(f"{path}: {key} is not a finite number; nothing was written. A model or adapter scored "
                        "there is broken (a NaN loss or logits): rerun the stage that built it") from None
    write_text(path, text + "\n")


def _non_finite_key(obj, prefix: str = "") -> str | None:
    """The dotted path of the first NaN / infinity in nested dicts and lists."""
    import math

    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list | tuple) else ()
    for k, v in items:
        path = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, float) and not math.isfinite(v):
            return path
        if (found := _non_finite_key(v, path)) is not None:
            return found
    return None


def free_bytes(path: str | os.PathLike) -> int:
    p = Path(path)
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def folder_bytes(path: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def require_free_space(path: str | os.PathLike, needed: int, what: str) -> None:
    free = free_bytes(path)
    if free < needed:
        raise UserError(
            f"not enough free disk for {what} at {path}: need {needed / 2**20:.0f} MiB, "
            f"have {free / 2**20:.0f} MiB; free some space or point the output elsewhere"
        )


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit code 2, no traceback."""

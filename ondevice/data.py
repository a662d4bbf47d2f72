"""Task data: validate a JSONL of {"prompt", "response"} rows and split it deterministically."""
from __future__ import annotations

import hashlib
import json
import random
import statistics
from pathlib import Path

from ondevice.atomic import UserError

MIN_ROWS = 10


def read_rows(path: str | Path, key: str = "adapters.<name>.data") -> tuple[list[dict], list[str]]:
    """Parse and validate; return (rows, warnings). Any bad row fails with its line number."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"data file {path} not found; set {key} in params.yaml")
    if not path.is_file():
        raise UserError(f"{key}={path} is a directory; point it at a JSONL file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 (byte {e.start}); re-save the file as UTF-8") from None
    rows, warnings, seen = [], [], {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not JSON ({e.msg}); each line must be one JSON object") from None
        if not isinstance(row, dict):
            kind = type(row).__name__
            raise UserError(f"{path}:{lineno}: a JSON {kind}, expected an object with prompt and response")
        for key in ("prompt", "response"):
            if key not in row:
                raise UserError(f"{path}:{lineno}: missing key {key!r}; each row needs prompt and response")
            if not isinstance(row[key], str):
                raise UserError(f"{path}:{lineno}: {key!r} is a {type(row[key]).__name__}, expected a string")
            if not row[key].strip():
                raise UserError(f"{path}:{lineno}: {key!r} is empty")
        key = row["prompt"].strip().lower()
        if key in seen:
            warnings.append(f"{path}:{lineno}: duplicate prompt of line {seen[key]}")
        else:
            seen[key] = lineno
        rows.append({"prompt": row["prompt"].strip(), "response": row["response"].strip()})
    if len(rows) < MIN_ROWS:
        raise UserError(f"{path}: {len(rows)} rows; need at least {MIN_ROWS} to split into train and eval")
    return rows, warnings


def split(rows: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded shuffle, then cut: the same file, fraction and seed always give the same split."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(rows) * eval_fraction))
    eval_idx = set(order[:n_eval])
    train = [r for i, r in enumerate(rows) if i not in eval_idx]
    evals = [r for i, r in enumerate(rows) if i in eval_idx]
    return train, evals


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def stats(train: list[dict], evals: list[dict], warnings: list[str]) -> dict:
    words = [len((r["prompt"] + " " + r["response"]).split()) for r in train + evals]
    digest = hashlib.sha256(json.dumps(train + evals, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "rows_train": len(train),
        "rows_eval": len(evals),
        "words_mean": round(statistics.mean(words), 2),
        "words_max": max(words),
        "duplicates": len(warnings),
        "content_sha256_16": digest,
    }

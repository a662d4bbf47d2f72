"""Task data: read an adapter's rows, validate them and split them deterministically.

A row is single-turn `{"prompt", "response"}` or a chat `{"messages": [{"role", "content"}, ...]}`
(OpenAI's and TRL's format: an optional system turn, then user and assistant turns alternating,
ending with the assistant). Both kinds may share a file: a prompt/response row is the conversation
[user, assistant], and `ondevice.text` renders every row through that one path. Files are JSONL,
CSV or Parquet (by extension), read with the json module, pandas and pyarrow; a UTF-8 byte-order
mark is skipped.
"""
from __future__ import annotations

import hashlib
import json
import random
import statistics
from pathlib import Path

from ondevice.atomic import UserError

MIN_ROWS = 10
ROLES = ("system", "user", "assistant")


def read_rows(path: str | Path, key: str = "adapters.<name>.data") -> tuple[list[dict], list[str]]:
    """Parse and validate; return (rows, warnings). Any bad row fails with where it is."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"data file {path} not found; set {key} in params.yaml")
    if not path.is_file():
        raise UserError(f"{key}={path} is a directory; point it at a JSONL, CSV or Parquet file")
    reader = {".csv": _csv_records, ".parquet": _parquet_records, ".pq": _parquet_records}.get(path.suffix.lower(),
                                                                                               _jsonl_records)
    rows, warnings, seen = [], [], {}
    for where, record in reader(path):
        row = _row(where, record)
        dedup = "\n".join(m["content"].lower() for m in conversation(row) if m["role"] == "user")
        if dedup in seen:
            warnings.append(f"{where}: duplicate prompt of {seen[dedup]}")
        else:
            label = where[len(str(path)) + 1:].strip()  # "4" (a JSONL line) or "row 4"
            seen[dedup] = f"line {label}" if label.isdigit() else label
        rows.append(row)
    if len(rows) < MIN_ROWS:
        raise UserError(f"{path}: {len(rows)} rows; need at least {MIN_ROWS} to split into train and eval")
    return rows, warnings


def _jsonl_records(path: Path):
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # -sig: Windows editors start the file with a byte-order mark
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 (byte {e.start}); re-save the file as UTF-8") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{lineno}", json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not JSON ({e.msg}); each line must be one JSON object") from None


def _csv_records(path: Path):
    """pandas' reader: quoting, embedded newlines and a BOM as spreadsheets write them; cells stay text."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 (byte {e.start}); re-save the file as UTF-8 CSV") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise UserError(f"{path}: not a readable CSV file ({str(e).strip()}); export it again with a header row") \
            from None
    yield from _table_records(path, list(frame.columns), frame.to_dict("records"))


def _parquet_records(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable Parquet file ({e}); write it again "
                        "(e.g. pandas.DataFrame.to_parquet)") from None
    yield from _table_records(path, table.column_names, table.to_pylist())


def _table_records(path: Path, columns: list[str], records: list[dict]):
    """CSV/Parquet rows as JSONL's objects: prompt and response columns, or a messages column (in a
    CSV cell, the messages list as JSON text)."""
    if "messages" not in columns and not {"prompt", "response"} <= set(columns):
        raise UserError(f"{path}: no prompt and response columns (nor messages); its columns are "
                        f"{', '.join(map(str, columns)) or 'none'}")
    for i, record in enumerate(records, start=1):
        where = f"{path}: row {i}"
        messages = record.get("messages")
        if isinstance(messages, str):
            try:
                record = {**record, "messages": json.loads(messages)}
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: 'messages' is not JSON ({e.msg}); give a JSON list of "
                                "{role, content} objects") from None
        elif messages is None and "prompt" in record:  # a mixed table's prompt/response row
            record = {k: v for k, v in record.items() if k != "messages"}
        yield where, record


def _row(where: str, row) -> dict:
    if not isinstance(row, dict):
        raise UserError(f"{where}: a JSON {type(row).__name__}, expected an object with prompt and response, "
                        "or messages")
    if "messages" in row:
        return {"messages": _messages(where, row["messages"])}
    for key in ("prompt", "response"):
        if key not in row:
            raise UserError(f"{where}: missing key {key!r}; each row needs prompt and response, or messages")
        _text(where, repr(key), row[key])
    return {"prompt": row["prompt"].strip(), "response": row["response"].strip()}


def _text(where: str, name: str, value) -> None:
    if not isinstance(value, str):
        raise UserError(f"{where}: {name} is a {type(value).__name__}, expected a string")
    if not value.strip():
        raise UserError(f"{where}: {name} is empty")


def _messages(where: str, messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: 'messages' is {'empty' if messages == [] else 'a ' + type(messages).__name__}, "
                        "expected a list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            got = m.get("role") if isinstance(m, dict) else type(m).__name__
            raise UserError(f"{where}: messages[{i}] has role {got!r}; each turn is {{role, content}} with role "
                            "system, user or assistant")
        _text(where, f"messages[{i}] ({m['role']})", m.get("content"))
        out.append({"role": m["role"], "content": m["content"].strip()})
    roles = [m["role"] for m in out]
    turns = roles[1:] if roles[0] == "system" else roles
    if not turns or turns != ["user", "assistant"] * (len(turns) // 2) or len(turns) % 2:
        raise UserError(f"{where}: turns are {', '.join(roles)}; after an optional system turn they must alternate "
                        "user, assistant, ... and end with the assistant's answer")
    return out


def conversation(row: dict) -> list[dict]:
    """The row as chat messages: its own, or [user prompt, assistant response]."""
    if "messages" in row:
        return row["messages"]
    return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]


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


def stats(train: list[dict], evals: list[dict], warnings: list[str], unanswered: int = 0) -> dict:
    words = [sum(len(m["content"].split()) for m in conversation(r)) for r in train + evals]
    digest = hashlib.sha256(json.dumps(train + evals, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "rows_train": len(train),
        "rows_eval": len(evals),
        "rows_chat": sum("messages" in r for r in train + evals),
        "rows_dropped_no_response_token": unanswered,
        "words_mean": round(statistics.mean(words), 2),
        "words_max": max(words),
        "duplicates": len(warnings),
        "content_sha256_16": digest,
    }

"""Held-out text for the studies: any plain-text file the pipeline never sees (by default a licence
text), cut into fixed-width rows scored on every token. An adapter or a quantizer must not buy its
split's quality with general text."""
from pathlib import Path

from ondevice.atomic import UserError

DEFAULT = "/usr/share/common-licenses/GPL-3"


def require(path) -> Path:
    """Before any heavy work: the file exists, or one line saying what to pass."""
    if not Path(path).is_file():
        raise UserError(f"{path} missing; pass --held-out with any plain-text file the pipeline never saw")
    return Path(path)


def held_out_rows(tokenizer, path, rows: int, width: int = 256) -> list[dict]:
    ids = tokenizer(Path(path).read_text())["input_ids"]
    starts = range(0, min(len(ids), width * rows), width)
    return [{"input_ids": ids[i:i + width], "labels": ids[i:i + width]} for i in starts]

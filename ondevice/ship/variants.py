"""Variants of the pipeline for `make sweep` and `make azure-job`: one run per `-S`.

`-S finetune.r=8 -S finetune.r=32` is two runs; several overrides in one `-S`, separated by spaces,
go into the same run (`-S "finetune.r=8 finetune.alpha=16"`). Values are YAML, as `dvc exp run -S`
reads them. Each variant is checked against the params schema before anything is queued or
submitted, so a typo fails here in one line instead of minutes later on a worker.
"""
from __future__ import annotations

import copy
import re
import shlex

import yaml

from ondevice import params as P
from ondevice.atomic import UserError

KEY = re.compile(r"^(?:params\.yaml:)?([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+)=(.*)$", re.S)


def parse(option: str) -> list[str]:
    """One `-S` value -> its `key=value` overrides (each as `dvc exp run -S` takes it)."""
    try:
        pieces = shlex.split(option)
    except ValueError as e:
        raise UserError(f"-S {option!r}: {e}") from None
    if not pieces:
        raise UserError("-S needs key=value, e.g. -S finetune.r=8")
    for piece in pieces:
        if not KEY.match(piece):
            raise UserError(f"-S {piece!r} is not section.key=value, e.g. -S finetune.r=8")
    return pieces


def apply(params: dict, overrides: list[str]) -> dict:
    """`params` with the overrides set, checked against the schema (a bad one fails in one line)."""
    out = copy.deepcopy(params)
    for piece in overrides:
        dotted, raw = KEY.match(piece).groups()
        *parents, key = dotted.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"-S {piece}: {dotted.rsplit('.', 1)[0]} is not a section of params.yaml")
        try:
            node[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            node[key] = raw
    return P.validate(out)


def variants(options: tuple[str, ...] | list[str], params: dict) -> list[list[str]]:
    """Every `-S` as a checked list of overrides; no `-S` at all is one run of params.yaml as it is."""
    runs = [parse(o) for o in options] or [[]]
    for overrides in runs:
        apply(params, overrides)
    return runs


def slug(overrides: list[str], limit: int = 40) -> str:
    """A name fragment for a variant: `finetune.r=8` -> `finetune-r-8`; none -> `params`."""
    text = "_".join(o.removeprefix("params.yaml:") for o in overrides) or "params"
    return re.sub(r"[^A-Za-z0-9_]+", "-", text).strip("-_")[:limit].strip("-_") or "params"

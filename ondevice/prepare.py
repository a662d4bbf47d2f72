"""The data@NAME stage: one adapter's rows read and validated, the rows that finetune.seq_len would cut
before their answer dropped, the rest split into train and eval, deterministically."""
from __future__ import annotations

import sys
from pathlib import Path

from ondevice.data import read_rows, split, stats, write_jsonl
from ondevice.text import keep_answerable


def run(adapter, base: Path, out_dir: Path, cfg) -> dict:
    """adapter: the params.AdapterConfig whose data to split (its file, template and seq_len); base: the
    model whose tokenizer and template measure each row; cfg: the params.Data section. Writes
    train.jsonl and eval.jsonl into out_dir; returns the split's stats (warnings included)."""
    from transformers import AutoTokenizer

    rows, warnings = read_rows(adapter.data, f"adapters.{adapter.name}.data")
    rows, dropped = keep_answerable(AutoTokenizer.from_pretrained(base), adapter.template, rows, adapter.seq_len,
                                    adapter.data)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if dropped:
        print(f"warning: {adapter.data}: {dropped} of {len(rows) + dropped} rows leave no response token within "
              f"finetune.seq_len={adapter.seq_len} tokens and were dropped; raise finetune.seq_len or shorten "
              "their prompts", file=sys.stderr)
    train, evals = split(rows, cfg.eval_fraction, cfg.seed)
    write_jsonl(out_dir / "train.jsonl", train)
    write_jsonl(out_dir / "eval.jsonl", evals)
    return stats(train, evals, warnings, dropped)

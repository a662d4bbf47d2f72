"""Olive data components (loaded by Olive as a user_script) that feed our calibration blocks to
Olive's own Gptq pass: the same train-split token blocks AWQ uses, never the eval split."""
import json

import torch
from olive.data.registry import Registry


@Registry.register_dataset()
def token_blocks(path, **kwargs):
    with open(path, encoding="utf-8") as f:
        blocks = json.load(f)
    return [({"input_ids": torch.tensor(b), "attention_mask": torch.ones(len(b), dtype=torch.long)}, 0) for b in blocks]


@Registry.register_pre_process()
def identity_pre_process(dataset, **kwargs):
    return dataset

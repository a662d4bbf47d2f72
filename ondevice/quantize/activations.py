"""What the calibration rows look like where a layer-wise quantizer needs them: the first decoder
layer's inputs, and each linear's input statistics (Gram matrix, mean |x|) as a layer runs."""
from __future__ import annotations

import torch
from olive.common.hf.wrapper import ModelWrapper
from torch import nn


class _StopForward(Exception):
    pass


@torch.no_grad()
def capture_first_layer_inputs(wrapper: ModelWrapper, input_ids: torch.Tensor, device: str):
    """Run the embeddings once and catch what the first decoder layer receives."""
    captured = {}
    layer0 = wrapper.get_layers(return_name=False)[0]

    def hook(_, args, kwargs):
        if "hidden_states" in kwargs:
            captured["hidden"], captured["args"] = kwargs.pop("hidden_states"), args
        else:
            captured["hidden"], captured["args"] = args[0], args[1:]
        captured["kwargs"] = kwargs
        raise _StopForward

    handle = layer0.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        wrapper.model(input_ids=input_ids.to(device), use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    dropped = ("past_key_values", "past_key_value", "use_cache")
    kwargs = {k: v for k, v in captured["kwargs"].items() if k not in dropped}
    return captured["hidden"], captured["args"], kwargs


def record_input_stats(layer: nn.Module, stats: dict) -> list:
    """Hook every linear of `layer` to store (Gram matrix, mean |x|) of its input, in fp32."""

    def record(mod, inp, _out):
        x = inp[0].detach().reshape(-1, inp[0].shape[-1]).float()
        stats[mod] = (x.T @ x / x.shape[0], x.abs().mean(0))

    return [m.register_forward_hook(record) for m in layer.modules() if isinstance(m, nn.Linear)]

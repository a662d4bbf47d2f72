"""AWQ: activation-aware weight quantization (Lin et al., arXiv 2306.00978), layer by layer.

For each decoder layer, with the float activations of calibration text from the train split:
  1. per input channel, the mean |activation| says which channels are salient;
  2. for each group of linears that read the same input, search s = mean|x|^a over a grid of a,
     quantize W*s, and keep the s that minimises the error of the group's output;
  3. fold 1/s into the op that produces the input (RMSNorm weight, v_proj rows, up_proj rows),
     so the float model is unchanged and only the rounding sees the scaled weights;
  4. optionally search a per-group clipping of the weight range (not for q/k, as in the paper);
  5. record scales/zero points on each linear; Olive's `finalize` packs them into its `olive`
     format, which the finetune stage dequantizes and the ONNX builder repacks bit for bit.

Built on Olive's layer-wise utilities (ModelWrapper to find norms/projections for Llama, Phi-3,
Mistral, Qwen..., WeightQuantizer, QuantInfo, finalize) so the output is Olive's own format.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from olive.common.hf.wrapper import ModelWrapper
from olive.common.quant.utils import WeightQuantizer
from olive.passes.pytorch.quant_utils import QuantInfo
from torch import nn
from tqdm.auto import tqdm

from ondevice.quantize.activations import capture_first_layer_inputs, record_input_stats
from ondevice.quantize.bits import BITS, INT8_BITS
from ondevice.quantize.gptq_round import gptq_round

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class AwqConfig:
    """This pass's config, declared and described beside it. Its values live only in params.yaml
    `quantize:` (`from_params` maps the keys); no defaults here, so there is no second copy."""
    group_size: int         # weights that share one scale and zero point
    symmetric: bool         # zero point fixed mid-grid; False: one per group (asymmetric)
    grid: int               # points of the scale-exponent search, alpha in [0, 1)
    clip: bool              # after scaling, search a clipping ratio per output row and group
    clip_grid: int          # points of that search ...
    clip_max_shrink: float  # ... from max |w| down to (1 - clip_max_shrink) of it
    gptq: bool              # round with GPTQ's error feedback instead of to nearest (same grid) ...
    gptq_damp: float        # ... its Gram matrix damped by this fraction of its mean diagonal
    bits: int = BITS        # not a knob: the pipeline ships int4

    @classmethod
    def from_params(cls, q: dict) -> AwqConfig:
        return cls(group_size=q["group_size"], symmetric=q["symmetric"], grid=q["awq_grid"], clip=q["awq_clip"],
                   clip_grid=q["awq_clip_grid"], clip_max_shrink=q["awq_clip_max_shrink"], gptq=q["awq_gptq"],
                   gptq_damp=q["awq_gptq_damp"])


def _fake_quant(w: torch.Tensor, quantizer: WeightQuantizer) -> torch.Tensor:
    return quantizer.fake_quantize(w.float())


def output_error(w_q: torch.Tensor, w: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Mean squared output error of x @ w_q.T vs x @ w.T over the calibration tokens, via the
    Gram matrix H = X^T X / n:  trace(D H D^T) with D = w_q - w. Exact, and independent of n.
    A 0-d tensor on w's device: reading it waits for the device, so callers read once per search."""
    d = (w_q - w.float())
    return (d @ gram * d).sum()


@torch.no_grad()
def search_scale(gram: torch.Tensor, linears: list[nn.Linear], quantizer_of, grid: int,
                 x_stat: torch.Tensor, expand=None, reduce=None) -> torch.Tensor:
    """Grid-search the AWQ exponent a in s = x_stat^a for one group of linears sharing an input,
    each rounded on its own grid (quantizer_of: linear -> its WeightQuantizer; int8 ones differ).

    x_stat: per-channel mean |activation|; expand maps a scale vector onto the linears' input
    channels (GQA v->o, where one v channel feeds several query heads) and reduce maps back.
    """
    expand = expand or (lambda s: s)
    weights = [lin.weight.data.float() for lin in linears]
    quantizers = [quantizer_of(lin) for lin in linears]
    w_stat = weight_magnitude(weights, quantizers[0].group_size)
    if reduce is not None:
        w_stat = reduce(w_stat)
    candidates, errors = [], []
    # Both AWQ variants: s = x^a, and "duo" s = x^a / w^(1-a) (relative weight magnitude, as in
    # AutoAWQ / llm-compressor); the exact output error picks the better one per group of linears.
    for duo in (False, True):
        for i in range(grid):
            ratio = i / grid
            s = x_stat.pow(ratio)
            if duo:
                s = s / (w_stat.pow(1 - ratio) + 1e-4)
            s = s.clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
            s_in = expand(s)
            # the linears' errors added in float64 one after another, as Python's sum of floats did
            err = torch.zeros((), dtype=torch.float64, device=s.device)
            for w, qz in zip(weights, quantizers, strict=True):
                err = err + output_error(_fake_quant(w * s_in, qz) / s_in, w, gram).double()
            candidates.append(s)
            errors.append(err)
    # One read of the device per search: on a GPU the loop above only queues kernels, where a read
    # per candidate waited for each in turn (29 s of quantize's 88 on an H200). argmin takes the first
    # of equal errors, as the strict `<` of a running best did; NaN never wins.
    best = int(torch.stack(errors).nan_to_num(nan=float("inf")).argmin())
    return candidates[best]


def weight_magnitude(weights: list[torch.Tensor], group_size: int) -> torch.Tensor:
    """Mean over output rows of |w| relative to its group's max, per input channel (AWQ's w_mean)."""
    w = torch.cat(weights, 0)
    g = w.abs().reshape(-1, group_size)
    return (g / (g.amax(1, keepdim=True) + 1e-6)).reshape(w.shape).mean(0)


@torch.no_grad()
def search_clip(w: torch.Tensor, gram: torch.Tensor, quantizer: WeightQuantizer, grid: int,
                max_shrink: float) -> torch.Tensor:
    """Per output row and group, the clipping of the weight range with the least output error of
    that group's partial product (AWQ's objective), computed from the Gram matrix's diagonal blocks."""
    gs = quantizer.group_size
    out_f, in_f = w.shape
    groups = in_f // gs
    idx = torch.arange(groups, device=w.device)
    blocks = gram.reshape(groups, gs, groups, gs)[idx, :, idx, :]  # G, gs, gs
    wg = w.float().reshape(out_f, groups, gs)
    org_max = wg.abs().amax(-1, keepdim=True)  # O, G, 1
    best_err = torch.full((out_f, groups), float("inf"), device=w.device)
    best_max = org_max.clone()
    for i in range(int(max_shrink * grid)):
        max_val = org_max * (1 - i / grid)
        cur = torch.clamp(wg, -max_val, max_val)
        d = quantizer.fake_quantize(cur.reshape(out_f, in_f)).reshape(out_f, groups, gs) - wg
        err = torch.einsum("ogk,gkl,ogl->og", d, blocks, d)
        better = err < best_err
        best_err[better] = err[better]
        best_max[better] = max_val[better]
    return best_max


def _apply_clip(lin: nn.Linear, max_val: torch.Tensor, gs: int) -> None:
    w = lin.weight.data
    shaped = w.reshape(w.shape[0], -1, gs)
    lin.weight.data = torch.clamp(shaped, -max_val.to(w.dtype), max_val.to(w.dtype)).reshape(w.shape)


def _kv_expand(num_heads: int, num_kv: int, head_dim: int):
    """Map a scale over v_proj's outputs (kv heads) onto o_proj's inputs (query heads)."""
    rep = num_heads // num_kv

    def expand(s):
        return s.reshape(num_kv, 1, head_dim).expand(num_kv, rep, head_dim).reshape(-1)

    def reduce(stat):
        return stat.reshape(num_kv, rep, head_dim).mean(1).reshape(-1)

    return expand, reduce


@torch.no_grad()
def quantize_layer(layer_wrapper, cfg: AwqConfig, stats: dict, quantizer_of, heads: tuple[int, int, int]):
    """Scale, fold, clip and record quant params for one decoder layer.

    stats[linear] = (gram, mean_abs) of that linear's input over the calibration tokens;
    quantizer_of(linear) = the grid it is rounded on (int4, or int8 for quantize.int8_modules).
    """
    num_heads, num_kv, head_dim = heads
    attn_in = layer_wrapper.get_attention_inputs(return_name=False)
    (attn_out,) = layer_wrapper.get_attention_outputs(return_name=False)
    mlp_in = layer_wrapper.get_mlp_inputs(return_name=False)
    (mlp_out,) = layer_wrapper.get_mlp_outputs(return_name=False)
    norm1 = layer_wrapper.get_first_layer_norm(return_name=False)
    # Gemma 2/3 normalise the MLP input with pre_feedforward_layernorm (post_attention_layernorm
    # scales the attention output); Olive's wrapper knows this for gemma2 only.
    norm2 = getattr(layer_wrapper.layer, "pre_feedforward_layernorm", None) or \
        layer_wrapper.get_second_layer_norm(return_name=False)
    grid = cfg.grid
    grams = {}

    def rescaled(gram, s_in):  # the input after folding is x / s: H -> diag(1/s) H diag(1/s)
        inv = 1.0 / s_in
        return gram * inv[:, None] * inv[None, :]

    def fold_into_norm(norm, linears, s):
        # Gemma's RMSNorm multiplies by (1 + w): fold into (1 + w), not w.
        offset = 1.0 if type(norm).__name__.startswith("Gemma") else 0.0
        norm.weight.data = (norm.weight.data + offset) / s.to(norm.weight.dtype) - offset
        if getattr(norm, "bias", None) is not None:
            norm.bias.data /= s.to(norm.bias.dtype)
        for lin in linears:
            lin.weight.data *= s.to(lin.weight.dtype)

    # q/k/v (or fused qkv) read the first norm's output.
    gram, stat = stats[attn_in[0]]
    s = search_scale(gram, attn_in, quantizer_of, grid, stat)
    fold_into_norm(norm1, attn_in, s)
    for lin in attn_in:
        grams[lin] = rescaled(gram, s)

    # v -> o: only when v_proj is its own linear; GQA handled by expanding kv scales over heads.
    gram, stat = stats[attn_out]
    if len(attn_in) == 3 and attn_in[2].out_features * (num_heads // num_kv) == attn_out.in_features:
        v_proj = attn_in[2]
        expand, reduce = _kv_expand(num_heads, num_kv, head_dim)
        s = search_scale(gram, [attn_out], quantizer_of, grid, reduce(stat), expand=expand, reduce=reduce)
        v_proj.weight.data /= s.to(v_proj.weight.dtype).unsqueeze(1)
        if v_proj.bias is not None:
            v_proj.bias.data /= s.to(v_proj.bias.dtype)
        attn_out.weight.data *= expand(s).to(attn_out.weight.dtype)
        gram = rescaled(gram, expand(s))
    grams[attn_out] = gram

    # gate/up (or fused gate_up) read the second norm's output.
    gram, stat = stats[mlp_in[0]]
    s = search_scale(gram, mlp_in, quantizer_of, grid, stat)
    fold_into_norm(norm2, mlp_in, s)
    for lin in mlp_in:
        grams[lin] = rescaled(gram, s)

    # up -> down: up_proj's rows (or the up half of a fused gate_up_proj) produce down's input.
    gram, stat = stats[mlp_out]
    s = search_scale(gram, [mlp_out], quantizer_of, grid, stat)
    up = mlp_in[-1]
    rows = slice(up.out_features - mlp_out.in_features, up.out_features)
    up.weight.data[rows] /= s.to(up.weight.dtype).unsqueeze(1)
    if up.bias is not None:
        up.bias.data[rows] /= s.to(up.bias.dtype)
    mlp_out.weight.data *= s.to(mlp_out.weight.dtype)
    grams[mlp_out] = rescaled(gram, s)

    no_clip = set(attn_in[:2]) if len(attn_in) == 3 else set()  # q/k: clipping hurts attention scores
    for lin in [*attn_in, attn_out, *mlp_in, mlp_out]:
        quantizer = quantizer_of(lin)
        if cfg.clip and lin not in no_clip:
            max_val = search_clip(lin.weight.data, grams[lin], quantizer, cfg.clip_grid, cfg.clip_max_shrink)
            _apply_clip(lin, max_val, quantizer.group_size)
        scales, zero_points = quantizer.find_qparams(lin.weight.data.float())
        if cfg.gptq:  # round with error feedback on the scaled, clipped weights; the grid stays
            lin.weight.data = gptq_round(lin.weight.data.float(), grams[lin], scales, zero_points, quantizer,
                                         cfg.gptq_damp).to(lin.weight.dtype)
        lin.quant_info = QuantInfo(quantizer=quantizer, scales=scales, zero_points=zero_points)


@torch.no_grad()
def awq(model, input_ids: torch.Tensor, cfg: AwqConfig, device: str = "cpu",
        int8: set[str] = frozenset()) -> ModelWrapper:
    """Run AWQ over all decoder layers in place; returns the Olive wrapper with quant_info attached.
    int8: full names of the linears rounded on the 8-bit grid (same group size and symmetry)."""
    int4_grid = WeightQuantizer(bits=cfg.bits, symmetric=cfg.symmetric, group_size=cfg.group_size)
    int8_grid = WeightQuantizer(bits=INT8_BITS, symmetric=cfg.symmetric, group_size=cfg.group_size)
    names = {module: name for name, module in model.named_modules()}

    def quantizer_of(linear):
        return int8_grid if names[linear] in int8 else int4_grid

    model.eval()
    wrapper = ModelWrapper.from_model(model)
    heads = (wrapper.num_attention_heads, wrapper.num_key_value_heads, wrapper.head_dim)
    for module in wrapper.get_embeds(return_name=False):
        module.to(device)
    if rotary := wrapper.get_rotary_embed(return_name=False):
        rotary.to(device)
    hidden, args, kwargs = capture_first_layer_inputs(wrapper, input_ids, device)

    for layer_wrapper in tqdm(wrapper.get_layer_wrappers(), desc="AWQ layers"):
        layer = layer_wrapper.layer.to(device)
        stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        handles = record_input_stats(layer, stats)
        out = layer(hidden, *args, **kwargs)
        for h in handles:
            h.remove()
        # Float outputs are unchanged by scaling, so the next layer's inputs come from this pass.
        hidden = out[0] if isinstance(out, tuple) else out
        quantize_layer(layer_wrapper, cfg, stats, quantizer_of, heads)
        layer.to("cpu")
    return wrapper


import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from olive.common.quant.utils import WeightQuantizer
from safetensors.torch import load_file

from conftest import AWQ_NO_CLIP, run_quantize
from ondevice.checkpoint import load_dequantized
from ondevice.quantize import awq as A
from ondevice.quantize import gptq_round as G
from ondevice.quantize.activations import capture_first_layer_inputs, record_input_stats
from ondevice.quantize.head import ort_int4_fake_quant


def test_gram_error_equals_direct_output_error():
    torch.manual_seed(0)
    x = torch.randn(300, 64)
    w = torch.randn(32, 64)
    w_q = WeightQuantizer(bits=4, symmetric=False, group_size=32).fake_quantize(w)
    gram = x.T @ x / x.shape[0]
    direct = ((x @ w_q.T - x @ w.T) ** 2).sum(1).mean().item()
    assert float(A.output_error(w_q, w, gram)) == pytest.approx(direct, rel=1e-4)


def test_gptq_rounding_stays_on_the_grid_and_cuts_the_output_error():
    """#18: GPTQ keeps AWQ's scales and zero points (so Olive packs exactly these values) and, on
    correlated inputs, lowers the layer's output error below rounding to nearest."""
    torch.manual_seed(0)
    x = torch.randn(512, 64) @ torch.randn(64, 64) * 0.3 + torch.randn(64)  # correlated channels
    w = torch.randn(48, 64)
    gram = x.T @ x / x.shape[0]
    quantizer = WeightQuantizer(bits=4, symmetric=False, group_size=32)
    scales, zeros = quantizer.find_qparams(w)
    nearest = quantizer.fake_quantize(w, scales, zeros)
    gptq = G.gptq_round(w, gram, scales, zeros, quantizer, damp=0.01)
    torch.testing.assert_close(quantizer.fake_quantize(gptq, scales, zeros), gptq)  # on the grid, same params
    assert not torch.equal(gptq, nearest)
    assert A.output_error(gptq, w, gram) < 0.8 * A.output_error(nearest, w, gram)


def test_gptq_in_blocks_rounds_exactly_as_column_by_column(monkeypatch):
    torch.manual_seed(1)
    x = torch.randn(600, 320) @ torch.randn(320, 320) * 0.2  # 320 columns: two full blocks and a tail
    w, gram = torch.randn(40, 320), x.T @ x / x.shape[0]
    quantizer = WeightQuantizer(bits=4, symmetric=False, group_size=32)
    scales, zeros = quantizer.find_qparams(w)
    blocked = G.gptq_round(w, gram, scales, zeros, quantizer, damp=0.1)
    monkeypatch.setattr(G, "GPTQ_BLOCK", 1)
    assert torch.equal(blocked, G.gptq_round(w, gram, scales, zeros, quantizer, damp=0.1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_gptq_on_a_gpu_replays_one_graph_per_block_with_the_eager_result(monkeypatch):
    """#28: on a GPU each full block is one CUDA graph replay (the tail block runs eagerly), captured
    once per shape and replayed on the next weights; the same kernels on the same inputs, so the same
    weights bit for bit, with the head's fixed weights too."""
    torch.manual_seed(1)
    x = torch.randn(600, 320, device="cuda") @ torch.randn(320, 320, device="cuda") * 0.2
    gram = x.T @ x / x.shape[0]
    quantizer = WeightQuantizer(bits=4, symmetric=False, group_size=32)
    cases, captured = [], len(G._GRAPHS)
    for w in (torch.randn(40, 320, device="cuda"), torch.randn(40, 320, device="cuda") * 3):  # 2nd: a replay
        scales, zeros = quantizer.find_qparams(w)
        for fixed in (None, torch.rand(w.shape, device="cuda") < 0.05):
            cases.append(((w, gram, scales, zeros, quantizer, 0.1, fixed),
                          G.gptq_round(w, gram, scales, zeros, quantizer, 0.1, fixed=fixed)))
    assert len(G._GRAPHS) - captured == 2  # with and without fixed weights: two captures, not four
    monkeypatch.setattr(G, "graphed_block", lambda *a: None)  # every block through the eager loop
    for (w, gram, scales, zeros, quantizer, damp, fixed), graphed in cases:
        assert torch.equal(graphed, G.gptq_round(w, gram, scales, zeros, quantizer, damp, fixed=fixed))


def test_scale_folding_keeps_the_float_layer_identical(tiny_dir, calib):
    """AWQ's scales are folded into the previous op: before rounding, the layer computes the same."""
    from olive.common.hf.wrapper import ModelWrapper
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    wrapper = ModelWrapper.from_model(model)
    hidden, args, kwargs = capture_first_layer_inputs(wrapper, calib[:2], "cpu")
    layer_wrapper = wrapper.get_layer_wrappers()[0]
    layer = layer_wrapper.layer
    before = layer(hidden, *args, **kwargs)
    before = before[0] if isinstance(before, tuple) else before
    stats = {}
    hooks = record_input_stats(layer, stats)
    layer(hidden, *args, **kwargs)
    for h in hooks:
        h.remove()
    quantizer = WeightQuantizer(bits=4, symmetric=False, group_size=32)
    norm_before = layer_wrapper.get_first_layer_norm(return_name=False).weight.clone()
    A.quantize_layer(layer_wrapper, A.AwqConfig(**AWQ_NO_CLIP), stats, lambda _: quantizer, (4, 2, 16))
    after = layer(hidden, *args, **kwargs)
    after = after[0] if isinstance(after, tuple) else after
    assert not torch.equal(norm_before, layer_wrapper.get_first_layer_norm(return_name=False).weight)  # scaled
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_awq_output_is_olive_format_on_the_int4_grid(quantized_dir):
    config = __import__("json").loads((quantized_dir / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == "olive" and qc["algorithm"] == "awq" and qc["bits"] == 4
    tensors = load_file(quantized_dir / "model.safetensors")
    assert "model.layers.0.self_attn.q_proj.qweight" in tensors
    model = load_dequantized(quantized_dir)
    w = model.model.layers[1].mlp.down_proj.weight
    scales = tensors["model.layers.1.mlp.down_proj.scales"]
    steps = w.reshape(w.shape[0], -1, 32) / scales.unsqueeze(-1)
    # every weight is an integer number of steps away from the group's zero point
    frac = steps - steps.round()
    assert frac.abs().max() < 1e-3
    # the head is rounded onto onnxruntime's int4 grid already: rounding again changes nothing
    head = model.lm_head.weight
    torch.testing.assert_close(ort_int4_fake_quant(head, 32), head, rtol=0, atol=1e-6)


def test_head_gptq_keeps_the_builders_grid_and_cuts_the_output_error():
    """quantize.head_gptq: the head rounded by GPTQ on onnxruntime's symmetric grid. The builder
    re-rounds it to itself (each block's largest weight kept), and the output error under the
    input's Gram matrix is well below rounding to nearest."""
    from ondevice.quantize.head import head_gptq

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 64, generator=g) @ torch.randn(64, 64, generator=g)  # correlated channels
    gram = x.T @ x / x.shape[0]
    w = torch.randn(96, 64, generator=g)
    nearest, rounded = ort_int4_fake_quant(w, 32), head_gptq(w, gram, 32, 0.1)

    def err(v):
        return float(((v - w) @ gram * (v - w)).sum())

    assert torch.equal(ort_int4_fake_quant(rounded, 32), rounded)  # bit-equal after the builder
    assert not torch.equal(rounded, nearest)
    assert err(rounded) < 0.8 * err(nearest), (err(rounded), err(nearest))


def test_head_is_gptq_rounded_for_awq_and_nearest_for_rtn(tiny_dir, tmp_path_factory, calib, quantized_dir):
    """rtn stays calibration-free (the reference baseline); awq's head differs from nearest, on the same grid."""
    from transformers import AutoModelForCausalLM

    float_head = AutoModelForCausalLM.from_pretrained(tiny_dir).lm_head.weight.detach()
    rtn_dir, _ = run_quantize(tiny_dir, tmp_path_factory, calib, algorithm="rtn")
    assert torch.equal(load_dequantized(rtn_dir).lm_head.weight, ort_int4_fake_quant(float_head, 32))
    awq_head = load_dequantized(quantized_dir).lm_head.weight.detach()
    assert not torch.equal(awq_head, ort_int4_fake_quant(float_head, 32))
    assert torch.equal(ort_int4_fake_quant(awq_head, 32), awq_head)


def test_awq_beats_rtn_on_calibration_error(tiny_dir, tmp_path_factory, calib, quantized_dir):
    """Same bits and group size: AWQ's model reproduces the float model's logits better than RTN's."""
    from transformers import AutoModelForCausalLM

    rtn_dir, metrics = run_quantize(tiny_dir, tmp_path_factory, calib, algorithm="rtn")
    assert metrics["algorithm"] == "rtn"
    ref = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    with torch.no_grad():
        target = ref(input_ids=calib[:4]).logits
        err = {name: (load_dequantized(d)(input_ids=calib[:4]).logits - target).pow(2).mean().item()
               for name, d in (("awq", quantized_dir), ("rtn", rtn_dir))}
    assert err["awq"] < err["rtn"], err


def test_gptq_runs_through_olive_with_our_calibration_blocks(tiny_dir, tmp_path_factory, calib):
    out, metrics = run_quantize(tiny_dir, tmp_path_factory, calib, algorithm="gptq")
    assert metrics["algorithm"] == "gptq"
    assert np.isfinite(load_dequantized(out).model.layers[0].self_attn.q_proj.weight.detach().numpy()).all()


def test_bits_per_weight_of_the_int4_checkpoint(quantized_dir):
    from ondevice.quantize import bits_per_weight

    assert bits_per_weight(quantized_dir) == 4 + 32 / 32 + 4 / 32  # codes, an fp32 scale and a 4-bit zero point per 32


@pytest.mark.parametrize("algorithm", ["rtn", "gptq"])
def test_int8_modules_through_olive_passes(tiny_dir, tmp_path_factory, calib, algorithm):
    """quantize.int8_modules for Olive's own passes (AWQ's: tests/test_families.py): those projections
    are packed on the 8-bit grid, recorded as overrides, and counted in bits_per_weight."""
    import json

    out, metrics = run_quantize(tiny_dir, tmp_path_factory, calib, algorithm=algorithm, int8_modules=["down_proj"])
    overrides = json.loads((out / "config.json").read_text())["quantization_config"]["overrides"]
    assert {name: o["bits"] for name, o in overrides.items()} == {f"model.layers.{i}.mlp.down_proj": 8 for i in (0, 1)}
    tensors = load_file(out / "model.safetensors")
    down, up = tensors["model.layers.0.mlp.down_proj.qweight"], tensors["model.layers.0.mlp.up_proj.qweight"]
    assert down.shape == (64, 128) and up.shape == (128, 32)  # one code per byte vs two
    assert len(down.unique()) > 16  # really 8-bit codes
    model = load_dequantized(out)
    w, scales = model.model.layers[0].mlp.down_proj.weight, tensors["model.layers.0.mlp.down_proj.scales"]
    steps = w.reshape(64, -1, 32) / scales.unsqueeze(-1)
    assert (steps - steps.round()).abs().max() < 1e-3
    attn, mlp_in, down_n = 2 * 64 * 64 + 2 * 64 * 32, 2 * 128 * 64, 64 * 128  # TINY's projections, per layer
    expected = (5.125 * (attn + mlp_in) + (8 + 1 + 8 / 32) * down_n) / (attn + mlp_in + down_n)
    assert metrics["int8_projections"] == 2
    assert metrics["bits_per_weight"] == round(expected, 3)


def _int4_codes(t: torch.Tensor) -> torch.Tensor:
    return torch.stack([(t >> (4 * i)) & 15 for i in range(2)])


def test_another_kernel_set_changes_only_ties(tiny_dir, calib, tmp_path):
    """The same params on torch's unvectorised kernels (ATEN_CPU_CAPABILITY=default), as another CPU
    kind would compute them: activations differ in the last bits, AWQ picks the same grid points, and
    only weights sitting on a rounding tie change code. The stated tolerance (README): at most 1 % of
    int4 codes, and every float tensor (scales, norms) within 1e-5 of its largest value."""
    torch.save(calib, tmp_path / "calib.pt")
    code = ("import sys, torch; from pathlib import Path; from conftest import QUANT; "
            "from ondevice.quantize import quantize; out, work = Path(sys.argv[2]), Path(sys.argv[3]); "
            "out.mkdir(); work.mkdir(); quantize(Path(sys.argv[1]), out, dict(QUANT), torch.load(sys.argv[4]), work)")
    models = {}
    for name, env in (("here", {}), ("plain", {"ATEN_CPU_CAPABILITY": "default"})):
        subprocess.run([sys.executable, "-c", code, str(tiny_dir), str(tmp_path / name), str(tmp_path / f"w_{name}"),
                        str(tmp_path / "calib.pt")], check=True, cwd=Path(__file__).parent,
                       env={**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                                              os.environ.get("PYTHONPATH", "")])})
        models[name] = load_file(tmp_path / name / "model.safetensors")
    here, plain = models["here"], models["plain"]
    assert here.keys() == plain.keys()
    def share(keys, differs) -> float:  # of all values in these tensors, the share that differs
        keys = list(keys)
        return sum(differs(here[k], plain[k]).sum().item() for k in keys) / sum(here[k].numel() for k in keys)

    head_keys = [k for k in here if k.split(".")[-2] in ("embed_tokens", "lm_head")]
    codes = share((k for k in here if k.endswith(".qweight")), lambda a, b: _int4_codes(a) != _int4_codes(b))
    # the head (tied embedding here) is stored fake-quantized on the builder's grid: a tie moves a value one step
    head = share(head_keys, lambda a, b: a != b)
    # scales and norms carry AWQ's scale search and the clip search: a tie there picks the next grid step
    moved = share((k for k in here if not k.endswith((".qweight", ".qzeros")) and k not in head_keys),
                  lambda a, b: (a.float() - b.float()).abs() > 1e-5 * a.float().abs().max())
    print(f"differing: int4 codes {codes:.3%}, head {head:.3%}, scales and norms {moved:.3%}")
    assert codes <= 0.01 and head <= 0.01 and moved <= 0.01

"""Every model family we support, through quantize -> finetune -> optimize -> adapter, on tiny random
models built from a config (SmolLM2's tokenizer, so the chat template and data are the real ones).

Per family: AWQ's scale folding leaves the float layer unchanged (norm forms and fused projections
differ by family); the shipped int4 weights are the quantizer's, bit for bit; onnxruntime's logits
with and without the adapter equal PyTorch's on the dequantized model (+ LoRA); the seed's client
streams an answer.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T

from conftest import AWQ_NO_CLIP, LORA, OPT, ROOT, TINY, run_quantize
from ondevice.export import onnx_lora
from ondevice.sources.model_source import SUPPORTED_ARCHITECTURES
from ondevice.tokenizer import copy_tokenizer

# The tolerance the ONNX logits reach against PyTorch (fp32, accuracy level 0), for every family.
LOGITS_ATOL = 2e-5

SHARED = {k: TINY[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                               "bos_token_id", "eos_token_id", "pad_token_id")}
LONGROPE = {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [1.5] * 8}
# family -> (config class, model class, family-specific settings, LoRA targets as the HF model names them)
FAMILIES = {
    "phi3": (T.Phi3Config, T.Phi3ForCausalLM, dict(tie_word_embeddings=False, original_max_position_embeddings=1024),
             ["qkv_proj", "gate_up_proj"]),
    "phi3.5-longrope": (T.Phi3Config, T.Phi3ForCausalLM,
                        dict(tie_word_embeddings=False, original_max_position_embeddings=256, rope_scaling=LONGROPE),
                        ["qkv_proj"]),
    "llama": (T.LlamaConfig, T.LlamaForCausalLM, dict(tie_word_embeddings=True), ["q_proj", "v_proj"]),
    "mistral": (T.MistralConfig, T.MistralForCausalLM, dict(tie_word_embeddings=False, sliding_window=None),
                ["q_proj", "v_proj", "o_proj"]),
    "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, dict(tie_word_embeddings=True), ["q_proj", "v_proj"]),
    "qwen3": (T.Qwen3Config, T.Qwen3ForCausalLM, dict(tie_word_embeddings=True, head_dim=16), ["q_proj", "v_proj"]),
    "gemma3": (T.Gemma3TextConfig, T.Gemma3ForCausalLM,
               dict(tie_word_embeddings=True, head_dim=16, query_pre_attn_scalar=16, sliding_window=128,
                    layer_types=["sliding_attention", "full_attention"]), ["q_proj", "v_proj"]),
}
# quantize.int8_modules per family (mixed precision): a fused checkpoint projection (Phi-3's gate_up_proj,
# split for the builder), the q/k/v the builder packs into one node, and Olive's own down_proj choice.
INT8_MODULES = {"phi3": ["gate_up_proj", "down_proj"], "mistral": ["q_proj", "k_proj", "v_proj"],
                "llama": ["down_proj"]}
# those modules -> the builder's MatMulNBits nodes they become
INT8_NODES = {"gate_up_proj": ["mlp/gate_proj", "mlp/up_proj"], "down_proj": ["mlp/down_proj"],
              "q_proj": ["attn/qkv_proj"], "k_proj": ["attn/qkv_proj"], "v_proj": ["attn/qkv_proj"]}


def test_every_supported_architecture_is_in_the_matrix():
    covered = {FAMILIES[f][1].__name__ for f in FAMILIES}
    assert covered == set(SUPPORTED_ARCHITECTURES)


def make_family_model(family: str, out: Path, tokenizer_dir: Path) -> Path:
    config_cls, model_cls, extra, _ = FAMILIES[family]
    torch.manual_seed(0)
    config = config_cls(**{**SHARED, **extra})
    config.architectures = [model_cls.__name__]
    model = model_cls(config)
    with torch.no_grad():  # spread the norms (and q/k/v biases) so folding mistakes show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand_like(p) * 2 + 0.1)
            elif name.endswith(".bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(out)
    copy_tokenizer(tokenizer_dir, out)
    return out


@pytest.fixture(scope="module", params=list(FAMILIES))
def built(request, tmp_path_factory, tokenizer_dir, tokenizer, rows, calib):
    """One family through the pipeline's functions: float -> AWQ int4 -> LoRA -> ONNX + adapter."""
    from ondevice.export.build import optimize
    from ondevice.export.onnx_lora import export_adapter
    from ondevice.finetune import train

    family = request.param
    targets = FAMILIES[family][3]
    float_dir = make_family_model(family, tmp_path_factory.mktemp(f"{family}-float"), tokenizer_dir)
    quantized_dir = run_quantize(float_dir, tmp_path_factory, calib, int8_modules=INT8_MODULES.get(family, []))[0]
    lora, _, _ = train(quantized_dir, tokenizer, rows, {**LORA, "target_modules": targets})
    with torch.no_grad():  # a strong adapter: three steps barely move B away from zero
        gen = torch.Generator().manual_seed(1)
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    lora_dir = tmp_path_factory.mktemp(f"{family}-lora")
    lora.save_pretrained(lora_dir)
    onnx_dir = tmp_path_factory.mktemp(f"{family}-onnx")
    optimize(quantized_dir, onnx_dir, {**OPT, "lora_targets": targets}, tmp_path_factory.mktemp(f"{family}-work"))
    export_adapter(lora_dir, onnx_dir, onnx_dir / "adapters" / "task.onnx_adapter")
    return family, float_dir, quantized_dir, lora.eval(), onnx_dir


def test_awq_scale_folding_keeps_each_family_float_layer_identical(built, calib):
    """Folding 1/s into the op before (RMSNorm, Gemma's 1+w norm, v_proj, the up half of gate_up)."""
    from olive.common.hf.wrapper import ModelWrapper
    from olive.common.quant.utils import WeightQuantizer
    from transformers import AutoModelForCausalLM

    from ondevice.quantize import awq as A
    from ondevice.quantize.activations import capture_first_layer_inputs, record_input_stats

    model = AutoModelForCausalLM.from_pretrained(built[1], dtype=torch.float32).eval()
    wrapper = ModelWrapper.from_model(model)
    hidden, args, kwargs = capture_first_layer_inputs(wrapper, calib[:2], "cpu")
    layer_wrapper = wrapper.get_layer_wrappers()[0]
    before = layer_wrapper.layer(hidden, *args, **kwargs)
    stats = {}
    hooks = record_input_stats(layer_wrapper.layer, stats)
    layer_wrapper.layer(hidden, *args, **kwargs)
    for h in hooks:
        h.remove()
    weights_before = {n: p.clone() for n, p in layer_wrapper.layer.named_parameters()}
    heads = (wrapper.num_attention_heads, wrapper.num_key_value_heads, wrapper.head_dim)
    int4 = WeightQuantizer(bits=4, symmetric=False, group_size=32)
    A.quantize_layer(layer_wrapper, A.AwqConfig(**AWQ_NO_CLIP), stats, lambda _: int4, heads)
    after = layer_wrapper.layer(hidden, *args, **kwargs)
    changed = [n for n, p in layer_wrapper.layer.named_parameters() if not torch.equal(p, weights_before[n])]
    assert any("norm" in n for n in changed)  # scales really were folded
    def first(out):
        return (out[0] if isinstance(out, tuple) else out)
    torch.testing.assert_close(first(after), first(before), rtol=1e-4, atol=1e-4)


def _hf_weights_by_onnx_node(model, config) -> dict[str, torch.Tensor]:
    """The dequantized HF weights, keyed like the builder's MatMulNBits nodes (it fuses q/k/v, splits gate/up)."""
    sizes = onnx_lora.column_slices(config, ("gate_proj", "up_proj"))
    out = {}
    for i, layer in enumerate(model.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        if hasattr(attn, "qkv_proj"):
            out["attn/qkv_proj"] = attn.qkv_proj.weight
        else:
            out["attn/qkv_proj"] = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        out["attn/o_proj"] = attn.o_proj.weight
        if hasattr(mlp, "gate_up_proj"):
            out["mlp/gate_proj"] = mlp.gate_up_proj.weight[sizes["gate_proj"]]
            out["mlp/up_proj"] = mlp.gate_up_proj.weight[sizes["up_proj"]]
        else:
            out["mlp/gate_proj"], out["mlp/up_proj"] = mlp.gate_proj.weight, mlp.up_proj.weight
        out["mlp/down_proj"] = mlp.down_proj.weight
        out.update({f"/model/layers.{i}/{k}/MatMulNBits": out.pop(k) for k in list(out) if not k.startswith("/")})
    return out


def test_shipped_int4_weights_are_the_quantized_ones(built):
    from ondevice.checkpoint import load_dequantized
    from onnx_int4 import dequantize_matmulnbits

    _, _, quantized_dir, _, onnx_dir = built
    model = load_dequantized(quantized_dir)
    shipped = dequantize_matmulnbits(onnx_dir)
    expected = _hf_weights_by_onnx_node(model, model.config)
    assert set(expected) <= set(shipped)
    for name, w in expected.items():
        assert torch.equal(w.detach().float(), torch.from_numpy(shipped[name])), name
    head = next(v for k, v in shipped.items() if k.startswith("/lm_head"))
    assert torch.equal(model.lm_head.weight.detach().float(), torch.from_numpy(head))


def test_int8_modules_ship_as_8_bit_matmulnbits(built):
    """quantize.int8_modules reaches the graph: those projections' nodes are bits=8, every other one 4."""
    from onnx_int4 import node_bits

    family, onnx_dir = built[0], built[4]
    eight = {f"/model/layers.{i}/{node}/MatMulNBits" for i in range(2) for m in INT8_MODULES.get(family, [])
             for node in INT8_NODES[m]}
    bits = node_bits(onnx_dir)
    assert eight <= set(bits)
    assert {n for n, b in bits.items() if b == 8} == eight
    assert {b for n, b in bits.items() if n not in eight} == {4}


def _logits_pair(built, tokenizer, rows, adapter: bool) -> tuple[np.ndarray, np.ndarray]:
    from ondevice.checkpoint import load_dequantized
    from ondevice.measure.onnx_scoring import OnnxScorer
    from ondevice.text import encode_example

    _, _, quantized_dir, lora, onnx_dir = built
    ids = np.array([encode_example(tokenizer, "chat", rows[0], 96)["input_ids"]], dtype=np.int64)
    scorer = OnnxScorer(onnx_dir)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), **scorer.past}
    if adapter:
        feed.update(onnx_lora.read_adapter(onnx_dir / "adapters" / "task.onnx_adapter"))
    onnx_logits = scorer.session.run(["logits"], feed)[0][0]
    torch_model = lora if adapter else load_dequantized(quantized_dir)
    with torch.no_grad():
        torch_logits = torch_model(input_ids=torch.from_numpy(ids)).logits[0].float().numpy()
    return onnx_logits, torch_logits


@pytest.mark.parametrize("adapter", [False, True], ids=["base", "adapter"])
def test_onnx_logits_equal_torch(built, tokenizer, rows, adapter):
    onnx_logits, torch_logits = _logits_pair(built, tokenizer, rows, adapter)
    print(f"{built[0]} {'adapter' if adapter else 'base'}: max |onnx - torch| = "
          f"{np.abs(onnx_logits - torch_logits).max():.2e} (logits span {np.ptp(torch_logits):.3f})")  # pytest -s
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=LOGITS_ATOL, rtol=0)
    if adapter:  # and the adapter really changes them: the tolerance is far below its effect
        base, _ = _logits_pair(built, tokenizer, rows, False)
        assert np.abs(onnx_logits - base).max() > 100 * LOGITS_ATOL


def test_seed_client_streams_an_answer(built):
    onnx_dir = built[4]
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "chat.py"), "--model", str(onnx_dir),
                          "--adapters", str(onnx_dir / "adapters"), "--adapter", "task", "--max-new-tokens", "6",
                          "Where should I go in May?"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip(), "no tokens streamed"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_batched_response_only_loss_equals_row_by_row_full_logits(family, tmp_path, tokenizer_dir, tokenizer, rows):
    """evaluate's torch_loss (rows padded together, get_decoder's output, the head from
    get_output_embeddings on response positions only) against the plain way: one row at a time, every
    position's logits from the forward itself (so a family whose forward does more after its head,
    such as a logit soft-cap, shows)."""
    from ondevice.measure.evaluate import encode_rows, torch_loss
    from ondevice.text import IGNORE

    model = T.AutoModelForCausalLM.from_pretrained(make_family_model(family, tmp_path / family, tokenizer_dir)).eval()
    examples = encode_rows(tokenizer, "chat", rows[:7], 96)
    assert len({len(e["input_ids"]) for e in examples}) > 1  # the padding is exercised
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            logits = model(input_ids=torch.tensor([e["input_ids"]])).logits[0, :-1]
            target = torch.tensor(e["labels"][1:])
            keep = target != IGNORE
            total += torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum").item()
            count += int(keep.sum())
    batched = torch_loss(model, examples, batch_rows=3)
    assert batched["tokens"] == count
    assert batched["loss"] == pytest.approx(total / count, abs=2e-4)


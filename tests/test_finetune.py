import pytest
import torch

from conftest import LORA, ROOT
from ondevice.finetune import batches, train
from onnx_int4 import dequantize_matmulnbits


def test_frozen_weights_in_training_are_the_shipped_int4_weights(trained, quantized_dir, onnx_dir):
    """The point of the lab: LoRA trains against exactly the weights that ship."""
    model = trained[0]
    base = model.get_base_model()
    shipped = dequantize_matmulnbits(onnx_dir)
    checked = 0
    for i, layer in enumerate(base.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        qkv = torch.cat([attn.q_proj.base_layer.weight, attn.k_proj.weight, attn.v_proj.base_layer.weight])
        pairs = {"attn/qkv_proj": qkv, "attn/o_proj": attn.o_proj.weight, "mlp/gate_proj": mlp.gate_proj.weight,
                 "mlp/up_proj": mlp.up_proj.weight, "mlp/down_proj": mlp.down_proj.weight}
        for name, w in pairs.items():
            onnx_w = torch.from_numpy(shipped[f"/model/layers.{i}/{name}/MatMulNBits"])
            assert torch.equal(w.detach().float(), onnx_w), name
            checked += 1
    head = next(v for k, v in shipped.items() if k.startswith("/lm_head"))
    assert torch.equal(base.lm_head.weight.detach().float(), torch.from_numpy(head))
    assert checked == 10
    assert not any(p.requires_grad for n, p in base.named_parameters() if "lora_" not in n)


def test_loss_goes_down_and_is_logged_per_step(trained):
    _, history, summary, adapter_dir = trained
    assert [h["step"] for h in history] == list(range(LORA["max_steps"]))
    assert history[-1]["loss"] < history[0]["loss"]
    assert summary["trainable_parameters"] > 0
    assert (adapter_dir / "adapter_config.json").exists()


def test_same_seed_same_result(quantized_dir, tokenizer, rows, trained):
    _, history, _ = train(quantized_dir, tokenizer, rows, LORA)[:3]
    assert [h["loss"] for h in history] == [h["loss"] for h in trained[1]]


def test_steps_keep_deterministic_kernels_without_torchs_nan_fill(quantized_dir, tokenizer, rows, monkeypatch):
    """The NaN fill of new tensors is a debugging aid of deterministic mode (a tenth of a bf16 step on 2 cores):
    it is off, and with it on the same steps give the same losses to the last bit."""
    import ondevice.finetune as ft

    cfg = {**LORA, "dropout": 0.1}  # dropout's masks too
    _, plain, _ = train(quantized_dir, tokenizer, rows, cfg)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory is False
    set_seed = ft.set_seed

    def set_seed_with_fill(seed):
        set_seed(seed)
        torch.utils.deterministic.fill_uninitialized_memory = True

    monkeypatch.setattr(ft, "set_seed", set_seed_with_fill)
    try:
        _, filled, _ = train(quantized_dir, tokenizer, rows, cfg)
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = False
    assert [h["loss"] for h in filled] == [h["loss"] for h in plain]


def test_a_retrained_adapter_is_the_same_bytes_whatever_the_hash_seed(quantized_dir, rows, tmp_path):
    """peft writes target_modules from a set, in the order of the process's string hashing: the saved
    adapter_config.json (and so its DVC hash, and what reruns after it) must not depend on that."""
    import os
    import subprocess
    import sys

    from ondevice.data import write_jsonl

    train_path = tmp_path / "train.jsonl"
    write_jsonl(train_path, rows[:1])  # as the data stage writes its split
    cfg = {**LORA, "max_steps": 1, "batch_size": 1}
    code = ("import sys; from pathlib import Path; from ondevice.finetune import run; "
            f"run(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), {cfg!r})")
    configs = []
    for seed in ("1", "2", "3"):  # with two modules, each order is a coin flip: three seeds showed both before the fix
        out = tmp_path / f"adapter{seed}"
        subprocess.run([sys.executable, "-c", code, str(quantized_dir), str(train_path), str(out)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}, cwd=ROOT, capture_output=True)
        configs.append((out / "adapter_config.json").read_bytes())
    assert configs[0] == configs[1] == configs[2]
    assert b'"q_proj",\n    "v_proj"' in configs[0]


def _epochs(examples, length_windows, n_batches):
    it = batches(examples, 4, 0, length_windows)
    return [[e["i"] for e in next(it)] for _ in range(n_batches)]


def test_length_windows_cut_padding_keep_every_epoch_whole_and_off_means_the_old_order():
    import random

    rng = random.Random(1)
    examples = [{"i": i, "input_ids": [0] * rng.randint(5, 200)} for i in range(42)]  # 10 batches of 4, 2 left out
    plain, grouped = _epochs(examples, 0, 20), _epochs(examples, 5, 20)

    def padding(run):
        return sum(4 * max(len(examples[i]["input_ids"]) for i in b) - sum(len(examples[i]["input_ids"]) for i in b)
                   for b in run)

    assert padding(grouped) < padding(plain) / 3
    for run in (plain, grouped):  # an epoch is 10 whole batches of distinct rows; the 2 left out change
        for epoch in (run[:10], run[10:]):
            rows = [i for b in epoch for i in b]
            assert all(len(b) == 4 for b in epoch) and len(set(rows)) == 40
    assert grouped[:10] != grouped[10:]
    # 0 is the order every committed adapter was trained in: shuffled rows cut in turn
    order = list(range(42))
    random.Random(0).shuffle(order)
    assert plain[:10] == [order[k:k + 4] for k in range(0, 40, 4)]


def test_custom_template(quantized_dir, tokenizer, rows):
    from ondevice.text import encode_example, segments

    chat = [{"role": "user", "content": "Where?"}, {"role": "assistant", "content": "Here."}]
    (prompt, untrained), (completion, trained) = segments(tokenizer, "Q: {prompt}\nA: {response}", chat)
    assert prompt == "Q: Where?\nA: " and completion.startswith("Here.") and trained and not untrained
    ex = encode_example(tokenizer, "Q: {prompt}\nA: {response}", rows[0], 64)
    assert ex["labels"][0] == -100 and ex["labels"][-1] != -100
    # the loss covers the response and nothing of the template's prompt part
    pairs = list(zip(ex["input_ids"], ex["labels"], strict=True))
    masked = tokenizer.decode([i for i, label in pairs if label == -100])
    assert masked.startswith("Q: ") and "A:" in masked
    assert "A:" not in tokenizer.decode([i for i, label in pairs if label != -100])


def test_cpu_bf16_is_chosen_by_the_cpus_own_flags():
    from ondevice.finetune import cpu_computes_bf16

    assert cpu_computes_bf16("flags : fpu avx2 avx512f avx512_bf16 amx_tile")
    assert cpu_computes_bf16("flags : fpu avx2 amx_bf16 amx_tile")
    assert not cpu_computes_bf16("flags : fpu sse4_2 avx2 fma")  # AVX2 alone would emulate bf16: stay fp32
    assert not cpu_computes_bf16("flags : avx512f avx512_bf16x")  # whole flags only


def test_cpu_bf16_steps_train_in_bf16_and_keep_fp32_weights(quantized_dir, tokenizer, rows, trained):
    model, history, summary = train(quantized_dir, tokenizer, rows, {**LORA, "cpu_bf16": True})
    assert summary["cpu_bf16"] is True and trained[2]["cpu_bf16"] is False
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast casts per matmul only
    fp32 = [h["loss"] for h in trained[1]]
    bf16 = [h["loss"] for h in history]
    assert bf16 != fp32 and bf16[0] == pytest.approx(fp32[0], abs=0.05)  # same start, bf16 rounding after


def test_cpu_steps_take_eager_attention_which_scores_as_sdpa_does(quantized_dir, tokenizer, rows, trained):
    """finetune.attention auto: eager on the CPU (the trained fixture), same math as SDPA to float rounding."""
    assert trained[2]["attention"] == "eager"
    model, history, summary = train(quantized_dir, tokenizer, rows, {**LORA, "attention": "sdpa"})
    assert summary["attention"] == "sdpa"
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in trained[1]], abs=2e-4)


def test_float_lora_trains_on_the_float_weights_and_evaluate_reports_int4s_gap(tiny_dir, tokenizer, rows, trained):
    """#18: the float_lora stage's LoRA sees the float model (not dequant(int4)), same data, steps and seed;
    evaluate's gap is the int4 adapter's perplexity over the float LoRA's, in %."""
    from transformers import AutoModelForCausalLM

    from ondevice.measure.evaluate import float_lora_gap, torch_loss
    from ondevice.text import encode_example

    model, history, _ = train(tiny_dir, tokenizer, rows, LORA, float_base=True)
    float_weights = AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict()
    frozen = model.get_base_model().model.layers[0].mlp.down_proj.weight
    assert torch.equal(frozen, float_weights["model.layers.0.mlp.down_proj.weight"])
    int4_frozen = trained[0].get_base_model().model.layers[0].mlp.down_proj.weight
    assert not torch.equal(frozen, int4_frozen)  # the int4 LoRA trained on other weights
    assert len(history) == LORA["max_steps"] and history[-1]["loss"] < history[0]["loss"]

    examples = {"travel": [encode_example(tokenizer, "chat", r, 96) for r in rows[:4]]}
    int4 = torch_loss(trained[0].eval(), examples["travel"])
    result = {"on_travel": {"adapter_travel": int4}}
    float_lora_gap(result, lambda split: model.eval(), examples)
    scores = result["on_travel"]
    assert scores["float_lora"] == torch_loss(model, examples["travel"])
    assert scores["int4_lora_gap_pct"] == round(100 * (int4["perplexity"] / scores["float_lora"]["perplexity"] - 1), 3)


def test_residual_init_starts_the_int4_base_at_the_float_weights(quantized_dir, tiny_dir):
    """studies/loftq_init.py: at full rank, int4 base + scale * B @ A equals the float projection (in the
    int4 model's coordinates: AWQ folded its input scale into the norm) at step 0."""
    import sys

    from transformers import AutoModelForCausalLM

    from ondevice.checkpoint import load_dequantized

    sys.path.insert(0, str(ROOT / "studies"))
    from loftq_init import float_target, residual_init

    float_state = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).state_dict()
    p = {**LORA, "r": 32, "alpha": 64, "target_modules": ["v_proj"]}  # v_proj is 32 x 64: rank 32 is all of it
    base = load_dequantized(quantized_dir, torch.float32, "cpu")
    name = "model.layers.0.self_attn.v_proj"
    target = float_target(float_state, base, name)
    model = residual_init(float_state)(base, p)
    v = model.base_model.model.model.layers[0].self_attn.v_proj
    merged = v.base_layer.weight + (p["alpha"] / p["r"]) * v.lora_B["default"].weight @ v.lora_A["default"].weight
    assert not torch.allclose(v.base_layer.weight, target, atol=1e-4)  # int4 is not the float weight...
    torch.testing.assert_close(merged, target, atol=1e-5, rtol=1e-5)  # ...but with the LoRA it starts there
    # the target is the int4 weight's own float: much closer to it than the residual's size
    assert (target - v.base_layer.weight).norm() < 0.2 * target.norm()

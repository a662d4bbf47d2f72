import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime_genai as og
import pytest

from conftest import ROOT, write_params
from ondevice.checkpoint import load_dequantized
from ondevice.export import onnx_lora
from ondevice.measure.evaluate import torch_loss
from ondevice.measure.onnx_scoring import OnnxScorer
from ondevice.text import encode_example

PROMPT = "<|im_start|>user\nWhat should I pack for Lisbon?<|im_end|>\n<|im_start|>assistant\n"


def test_output_contract_files(onnx_dir):
    for name in ("genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json", "tokenizer_config.json",
                 "adapters/travel.onnx_adapter"):
        assert (onnx_dir / name).exists(), name
    tc = json.loads((onnx_dir / "tokenizer_config.json").read_text())
    assert tc["tokenizer_class"] == "GPT2Tokenizer" and tc["eos_token"] == "<|im_end|>"


def test_shipped_config_lets_onnxruntime_size_the_thread_pool(onnx_dir):
    """Unset, onnxruntime-genai asks for logical CPUs / 2 threads: one on a 2-vCPU box (#17)."""
    session = json.loads((onnx_dir / "genai_config.json").read_text())["model"]["decoder"]["session_options"]
    assert session["intra_op_num_threads"] == 0


def test_cuda_build_asks_for_cuda_graphs_and_fp16_lora_inputs(quantized_dir, tmp_path):
    """The CUDA graph is built on the CPU as well: fp16 LoRA inputs, and optimize.cuda_graph in genai_config."""
    from conftest import OPT
    from ondevice.export.build import optimize

    out = tmp_path / "cuda"
    optimize(quantized_dir, out, {**OPT, "provider": "cuda", "cuda_graph": True}, tmp_path / "work")
    session = json.loads((out / "genai_config.json").read_text())["model"]["decoder"]["session_options"]
    assert [p["cuda"]["enable_cuda_graph"] for p in session["provider_options"] if "cuda" in p] == ["1"]
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert onnx_lora.lora_dtype(graph) == np.float16


def test_kernel_guard_scores_a_cuda_build_against_the_cpu_build_on_cpu_kernels(quantized_dir, onnx_dir, tokenizer,
                                                                              rows, tmp_path):
    """#15: the guard's fp32 reference runs on onnxruntime's CPU kernels even for a CUDA build (fp16 graph):
    there, it measures agreement with the CPU build of the same int4 weights."""
    from conftest import OPT
    from ondevice.export.build import optimize
    from ondevice.measure.onnx_scoring import kernel_guard

    optimize(quantized_dir, tmp_path / "cuda", {**OPT, "provider": "cuda"}, tmp_path / "work")
    cuda_on_cpu = OnnxScorer(tmp_path / "cuda", accuracy_level=0, on_cpu=True)
    cpu_build = OnnxScorer(onnx_dir, accuracy_level=0)
    assert (cuda_on_cpu.provider, cpu_build.provider) == ("cpu", "cpu")
    examples = {"travel": [encode_example(tokenizer, "chat", r, 96) for r in rows[:4]]}
    guard = kernel_guard(cuda_on_cpu, cpu_build, examples, {"travel": None}, 0, 0.9)
    assert guard["provider"] == guard["reference_provider"] == "cpu"
    assert {v.dtype for v in cuda_on_cpu.past.values()} == {np.dtype(np.float16)}  # two different graphs:
    assert {v.dtype for v in cpu_build.past.values()} == {np.dtype(np.float32)}    # fp16 I/O vs fp32
    assert guard["passed"] and guard["mean_kl_max"] < 1e-3, guard  # the same int4 weights agree across kernels


def test_runtime_tokenizer_matches_training_tokenizer(onnx_dir, tokenizer):
    model = og.Model(str(onnx_dir))
    ids = list(og.Tokenizer(model).encode(PROMPT))
    assert ids == tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    assert -1 not in ids


def _generate(model, adapters, name, n=8):
    tok = og.Tokenizer(model)
    params = og.GeneratorParams(model)
    ids = tok.encode(PROMPT)
    params.set_search_options(max_length=len(ids) + n, min_length=len(ids) + n, do_sample=False)
    gen = og.Generator(model, params)
    if name:
        gen.set_active_adapter(adapters, name)
    gen.append_tokens(ids)
    stream, text = tok.create_stream(), ""
    while not gen.is_done():
        gen.generate_next_token()
        text += stream.decode(gen.get_next_tokens()[0])
    return list(gen.get_sequence(0))[len(ids):], text


def test_client_contract_with_and_without_adapter_and_swap(onnx_dir, tmp_path):
    """The documented client: og.Model, og.Adapters.load, set_active_adapter, stream decode."""
    model = og.Model(str(onnx_dir))
    adapters = og.Adapters(model)
    adapters.load(str(onnx_dir / "adapters" / "travel.onnx_adapter"), "travel")
    # a second adapter of another rank, hot-swapped on the same base
    targets = onnx_lora.find_targets(onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False), ["q_proj"])
    rng = np.random.default_rng(0)
    other = {}
    for t in targets:
        other[t.input_a] = rng.normal(0, 0.5, (t.in_features, 2)).astype(np.float32)
        other[t.input_b] = rng.normal(0, 0.5, (2, t.out_features)).astype(np.float32)
    onnx_lora.check_adapter_matches(onnx_dir / "model.onnx", other)
    onnx_lora.write_adapter(tmp_path / "other.onnx_adapter", other)
    adapters.load(str(tmp_path / "other.onnx_adapter"), "other")
    plain, _ = _generate(model, adapters, None)
    travel, text = _generate(model, adapters, "travel")
    noisy, _ = _generate(model, adapters, "other")
    assert len(plain) == len(travel) == 8
    assert noisy != plain  # a strong random adapter changes the answer: inputs really reach the graph
    assert _generate(model, adapters, None)[0] == plain  # and switching back restores the base


def test_adapter_with_wrong_names_or_shapes_is_rejected(onnx_dir):
    arrays = onnx_lora.read_adapter(onnx_dir / "adapters" / "travel.onnx_adapter")
    bad = {k.replace("qkv_proj", "q_proj"): v for k, v in arrays.items()}
    with pytest.raises(ValueError, match="is not an input of"):
        onnx_lora.check_adapter_matches(onnx_dir / "model.onnx", bad)
    name = next(iter(arrays))
    wrong = dict(arrays)
    wrong[name] = np.zeros((arrays[name].shape[0] + 1, arrays[name].shape[1]), np.float32)
    with pytest.raises(ValueError, match="model expects dim 0"):
        onnx_lora.check_adapter_matches(onnx_dir / "model.onnx", wrong)


def test_onnx_with_adapter_equals_torch_lora(onnx_dir, trained, tokenizer, rows, quantized_dir):
    """The shipped graph + adapter file compute what peft computed in training (fp32 accuracy level)."""
    examples = [encode_example(tokenizer, "chat", r, 96) for r in rows[:6]]
    model = trained[0].eval()
    scorer = OnnxScorer(onnx_dir)
    with_adapter = scorer.loss(examples, onnx_lora.read_adapter(onnx_dir / "adapters" / "travel.onnx_adapter"))
    assert with_adapter["loss"] == pytest.approx(torch_loss(model, examples)["loss"], abs=2e-3)
    assert scorer.loss(examples)["loss"] == pytest.approx(torch_loss(load_dequantized(quantized_dir), examples)["loss"],
                                                          abs=2e-3)


def test_chat_script_streams_an_answer(onnx_dir):
    where = ["--model", str(onnx_dir), "--adapters", str(onnx_dir / "adapters")]
    for adapter in ("travel", "none"):
        out = subprocess.run([sys.executable, str(ROOT / "scripts" / "chat.py"), *where,
                              "--adapter", adapter, "--max-new-tokens", "5", "Hello?"],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr  # a random tiny model may answer with end-of-turn at once
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "chat.py"), *where,
                          "--adapter", "cooking", "Hi"], capture_output=True, text=True)
    assert bad.returncode != 0 and "no adapter 'cooking'" in bad.stderr and "known: travel, none" in bad.stderr


def test_pruned_head_is_the_last_row_of_the_scoring_graphs_logits(onnx_dir):
    import onnxruntime as ort

    model = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False)
    assert any(n.name.startswith("/lm_head/prune/") for n in model.graph.node)  # the shipped head is pruned
    scorer = OnnxScorer(onnx_dir)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    shipped = ort.InferenceSession(str(onnx_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    ids = np.array([[1, 520, 2000, 77, 9, 311]], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), **scorer.past}
    last = shipped.run(["logits"], feed)[0]
    full = scorer.session.run(["logits"], feed)[0]
    assert last.shape[1] == 1 and full.shape[1] == ids.shape[1]
    np.testing.assert_allclose(last[0, -1], full[0, -1], rtol=1e-4, atol=1e-4)


def test_chat_serves_an_adapter_in_its_training_template(onnx_dir, tokenizer, tmp_path):
    """An adapter trained with a custom template is prompted with that template, token for token."""
    import importlib.util

    from ondevice.text import encode_example

    spec = importlib.util.spec_from_file_location("chat", ROOT / "scripts" / "chat.py")
    chat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chat)
    template = "Question: {prompt}\nAnswer: {response}"
    write_params(tmp_path / "params.yaml", {"adapters.travel.template": template})
    assert chat.adapter_template(tmp_path / "params.yaml", "travel") == template
    assert chat.adapter_template(tmp_path / "params.yaml", None) == "chat"  # the base: finetune.template
    text = chat.prompt_text(None, onnx_dir, template, [{"role": "user", "content": "Is Porto walkable?"}])
    assert text == "Question: Is Porto walkable?\nAnswer: "
    trained = encode_example(tokenizer, template, {"prompt": "Is Porto walkable?", "response": "Yes."}, 96)
    served = list(og.Tokenizer(og.Model(str(onnx_dir))).encode(text))
    assert trained["input_ids"][: len(served)] == served
    assert trained["labels"][len(served) - 1] == -100 and trained["labels"][len(served)] != -100


@pytest.mark.parametrize("window,context,floor", [(4096, 131072, 4096), (262144, 131072, 0), (None, 2048, 0),
                                                  (512, None, 512)])
def test_kv_floor_is_the_sliding_window_only_when_it_is_inside_the_context(tmp_path, window, context, floor):
    """Phi-3.5-mini's 262,144-token window exceeds its 131,072 context: a floor that large failed on the H100
    (max_length above context_length), and at the context it asked for a 51 GB KV cache."""
    from ondevice.runtime.client import kv_capacity_floor

    decoder = {"sliding_window": {"window_size": window}} if window else {}
    model = {"decoder": decoder, **({"context_length": context} if context else {})}
    (tmp_path / "genai_config.json").write_text(json.dumps({"model": model}))
    assert kv_capacity_floor(tmp_path) == floor


def test_kernel_guard_compares_the_int8_kernel_with_fp32_on_the_same_weights(onnx_dir, tokenizer, rows):
    """#18: evaluate checks the shipped accuracy level against fp32 compute of the same int4 weights."""
    from ondevice.measure.onnx_scoring import kernel_guard, shipped_accuracy_level

    examples = {"travel": [encode_example(tokenizer, "chat", r, 96) for r in rows[:4]]}
    adapters = {"travel": onnx_lora.read_adapter(onnx_dir / "adapters" / "travel.onnx_adapter")}
    assert shipped_accuracy_level(onnx_dir) == 0  # the fixture's build
    fp32, int8 = OnnxScorer(onnx_dir, accuracy_level=0), OnnxScorer(onnx_dir, accuracy_level=4)
    same = kernel_guard(fp32, fp32, examples, adapters, 0, 0.98)
    assert same["top1_agreement_min"] == 1.0 and same["mean_kl_max"] == pytest.approx(0, abs=1e-9) and same["passed"]
    fast = kernel_guard(int8, fp32, examples, adapters, 4, 1.0)
    assert 0 < fast["mean_kl_max"] < 0.05, fast  # int8 activations move the distribution, a little
    assert 0.8 <= fast["top1_agreement_min"] <= 1.0 and fast["passed"] == (fast["top1_agreement_min"] == 1.0)
    assert fast["on_travel"]["tokens"] == sum(sum(1 for t in e["labels"][1:] if t != -100) for e in examples["travel"])
    assert abs(fast["on_travel"]["loss_minus_fp32_loss"]) < 0.05 and same["on_travel"]["loss_minus_fp32_loss"] == 0


def test_the_head_is_packed_on_the_block_quantize_recorded(quantized_dir, onnx_dir, tmp_path):
    """The int4 grid's one home is quantize: it rounds the float head on quantize.head_block_size and
    records it in the checkpoint; optimize reads it there (no optimize knob of its own to disagree)."""
    import shutil

    from conftest import QUANT
    from ondevice.atomic import UserError
    from ondevice.export.build import head_block

    assert head_block(quantized_dir) == QUANT["head_block_size"]
    graph = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False).graph
    head = [n for n in graph.node if n.op_type == "MatMulNBits" and "lm_head" in n.name]
    assert head and {a.i for n in head for a in n.attribute if a.name == "block_size"} == {QUANT["head_block_size"]}
    old = tmp_path / "old"
    shutil.copytree(quantized_dir, old)
    config = json.loads((old / "config.json").read_text())
    del config["quantization_config"]["head_block_size"]
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="run `dvc repro quantize`"):
        head_block(old)


@pytest.mark.parametrize("int8_modules", [[], ["q_proj", "k_proj", "v_proj"]], ids=["int4", "int8-qkv"])
def test_a_symmetric_checkpoint_builds_and_its_logits_equal_torch(tiny_dir, tmp_path_factory, calib, tokenizer, rows,
                                                                   tmp_path, int8_modules):
    """quantize.symmetric: true stores no zero points; onnxruntime-genai 0.18's builder fuses q, k and v
    by concatenating theirs (a TypeError on None). The build hands it the implicit mid-grid zero points."""
    from conftest import OPT, run_quantize
    from ondevice.export.build import optimize

    quantized, _ = run_quantize(tiny_dir, tmp_path_factory, calib, symmetric=True, int8_modules=int8_modules)
    optimize(quantized, tmp_path / "onnx", OPT, tmp_path / "work")
    ids = np.array([encode_example(tokenizer, "chat", rows[0], 96)["input_ids"]], dtype=np.int64)
    scorer = OnnxScorer(tmp_path / "onnx")
    onnx_logits = scorer.session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                                  **scorer.past})[0][0]
    import torch

    with torch.no_grad():
        torch_logits = load_dequantized(quantized)(input_ids=torch.from_numpy(ids)).logits[0].float().numpy()
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=2e-5, rtol=0)

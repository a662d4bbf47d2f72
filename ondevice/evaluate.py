"""Loss and perplexity on the eval split, measured on what users deploy.

(a) the float base in PyTorch; (b) the shipped int4 ONNX model, no adapter; (c) the same ONNX
model with the adapter's tensors fed to its LoRA inputs, all through onnxruntime. Loss counts the
response tokens only (the prompt is given), exactly as in training.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ondevice.text import IGNORE, encode_example


def _mean_loss(total: float, count: int) -> dict:
    loss = total / max(count, 1)
    return {"loss": round(loss, 5), "perplexity": round(math.exp(loss), 4), "tokens": count}


@torch.no_grad()
def torch_loss(model, examples: list[dict]) -> dict:
    total, count = 0.0, 0
    for ex in examples:
        ids = torch.tensor([ex["input_ids"]], device=model.device)
        labels = torch.tensor([ex["labels"]], device=model.device)
        logits = model(input_ids=ids).logits[0, :-1].float()
        target = labels[0, 1:]
        keep = target != IGNORE
        total += torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum").item()
        count += int(keep.sum())
    return _mean_loss(total, count)


def scoring_graph(onnx_dir: Path, accuracy_level: int | None = None) -> bytes | str:
    """The shipped graph, or, if its head is pruned to the last position (prefill computes one row
    of logits, which is what generation needs), the same graph and weights with every position's
    logits: loss needs them all. Only the two pruning nodes go; the weights stay where they are.
    accuracy_level: set every MatMulNBits node's compute precision (0 = fp32), same int4 weights."""
    import onnx

    path = onnx_dir / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    prune = {n.output[0]: n for n in model.graph.node if n.name.startswith("/lm_head/prune/")}
    windowed = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"
                and any(a.name == "local_window_size" and a.i > 0 for a in n.attribute)]
    if not prune and not windowed and accuracy_level is None:
        return str(path)
    for node in model.graph.node:
        if node.op_type == "MatMulNBits" and accuracy_level is not None:
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(kept + [onnx.helper.make_attribute("accuracy_level", accuracy_level)])
    # Scoring feeds the whole sequence with an empty past, which onnxruntime's sliding-window
    # attention refuses (it wants a cache of window size); within the window, sliding and full
    # attention are the same, and OnnxScorer keeps every sequence within it.
    for node in windowed:
        kept = [a for a in node.attribute if a.name not in ("local_window_size", "sliding_window_cache")]
        del node.attribute[:]
        node.attribute.extend(kept)
    for node in model.graph.node:
        if node.name.startswith("/lm_head/prune/"):
            continue
        while node.input and node.input[0] in prune:  # the head reads Unsqueeze(Gather(hidden, -1))
            node.input[0] = prune[node.input[0]].input[0]
    kept = [n for n in model.graph.node if not n.name.startswith("/lm_head/prune/")]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    logits = next(o for o in model.graph.output if o.name == "logits")
    logits.type.tensor_type.shape.dim[1].dim_param = "sequence_length"
    return model.SerializeToString()


class OnnxScorer:
    """Full-sequence scoring with the shipped decoder, with or without adapter tensors."""

    def __init__(self, onnx_dir: Path, threads: int = 0, accuracy_level: int | None = None, on_cpu: bool = False):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # LoRA defaults are overridable initializers on purpose
        if threads:
            opts.intra_op_num_threads = threads
        # a graph given as bytes finds its external weights here: the shipped model.onnx.data
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(onnx_dir))
        from ondevice.cuda_check import model_providers, require_cuda_provider

        # a CUDA build is scored on the GPU, never silently on CPU; on_cpu asks for the CPU kernels on purpose
        providers = ["CPUExecutionProvider"]
        if "cuda" in model_providers(onnx_dir) and not on_cpu:
            require_cuda_provider(f"{onnx_dir} was built for optimize.provider=cuda")
            # the CUDA EP, checked above; onnxruntime itself keeps a few shape nodes of the graph on the CPU
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.session = ort.InferenceSession(scoring_graph(Path(onnx_dir), accuracy_level), opts, providers=providers)
        self.provider = self.session.get_providers()[0].removesuffix("ExecutionProvider").lower()
        decoder = json.loads((Path(onnx_dir) / "genai_config.json").read_text())["model"]["decoder"]
        self.window = (decoder.get("sliding_window") or {}).get("window_size") or 0
        self.past = {}
        for i in self.session.get_inputs():
            if i.name.startswith("past_key_values"):  # fp32 on CPU builds, fp16 on CUDA builds
                shape = (1, decoder["num_key_value_heads"], 0, decoder["head_size"])
                self.past[i.name] = np.zeros(shape, np.float16 if i.type == "tensor(float16)" else np.float32)

    def log_probs(self, ex: dict, adapter: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Next-token log-probabilities at the response positions, and the response tokens."""
        if self.window and len(ex["input_ids"]) > self.window:
            raise ValueError(f"a {len(ex['input_ids'])}-token example is longer than the model's "
                             f"{self.window}-token sliding window; score with a shorter seq_len")
        ids = np.array([ex["input_ids"]], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), **self.past, **(adapter or {})}
        logits = self.session.run(["logits"], feed)[0][0, :-1].astype(np.float64)
        target = np.array(ex["labels"][1:])
        logits = logits[target != IGNORE]
        top = logits.max(-1, keepdims=True)
        logz = np.log(np.exp(logits - top).sum(-1, keepdims=True)) + top
        return logits - logz, target[target != IGNORE]

    def loss(self, examples: list[dict], adapter: dict | None = None) -> dict:
        total, count = 0.0, 0
        for ex in examples:
            logp, target = self.log_probs(ex, adapter)
            total -= float(logp[np.arange(len(target)), target].sum())
            count += len(target)
        return _mean_loss(total, count)


def shipped_accuracy_level(onnx_dir: Path) -> int:
    import onnx

    graph = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False).graph
    levels = {a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"}
    return max(levels, default=0)


def kernel_guard(shipped: OnnxScorer, exact: OnnxScorer, examples: dict, adapters: dict, level: int,
                 min_agreement: float) -> dict:
    """The shipped int4 kernel (on CPU, accuracy_level > 0 computes in int8; on CUDA, fp16) against the
    same int4 weights in fp32 on onnxruntime's CPU kernels (level 0), on each eval split with its own
    adapter, as users run it: how often the next token each one would pick greedily agrees
    (teacher-forced: every response position, the same prefix for both, so one flip does not derail
    the rest), and the mean KL divergence of the shipped distribution from the fp32 one (nats/token)."""
    out = {"accuracy_level": level, "provider": shipped.provider, "reference_level": 0,
           "reference_provider": exact.provider, "min_top1_agreement": min_agreement}
    for split, ex in examples.items():
        agree, kl, nll_fast, nll_ref, count = 0, 0.0, 0.0, 0.0, 0
        for e in ex:
            fast, target = shipped.log_probs(e, adapters[split])
            ref, _ = exact.log_probs(e, adapters[split])
            agree += int((fast.argmax(-1) == ref.argmax(-1)).sum())
            kl += float((np.exp(ref) * (ref - fast)).sum())
            rows = np.arange(len(target))
            nll_fast, nll_ref = nll_fast - fast[rows, target].sum(), nll_ref - ref[rows, target].sum()
            count += len(ref)
        out[f"on_{split}"] = {"top1_agreement": round(agree / max(count, 1), 5),
                              "mean_kl": round(kl / max(count, 1), 6), "tokens": count,
                              "loss_minus_fp32_loss": round(float(nll_fast - nll_ref) / max(count, 1), 5)}
    out["top1_agreement_min"] = min(out[f"on_{s}"]["top1_agreement"] for s in examples)
    out["mean_kl_max"] = max(out[f"on_{s}"]["mean_kl"] for s in examples)
    out["passed"] = out["top1_agreement_min"] >= min_agreement
    return out


def generate(onnx_dir: Path, adapter_path: Path | None, adapter_name: str, prompts: list[str], template: str,
             tokenizer, max_new_tokens: int) -> list[str]:
    """Greedy answers through onnxruntime-genai, the way the chat client runs them."""
    from ondevice.runtime import kv_capacity_floor, open_model, stream_answer
    from ondevice.text import render

    model, og_tok, adapters = open_model(onnx_dir, {adapter_name: adapter_path} if adapter_path else None)
    floor, answers = kv_capacity_floor(onnx_dir), []
    for prompt in prompts:
        ids = og_tok.encode(render(tokenizer, template, prompt)[0])
        answer = "".join(stream_answer(model, og_tok, adapters, adapter_name, ids, max_new_tokens, floor))
        answers.append(answer.replace("<|im_end|>", "").strip())
    return answers


def encode_rows(tokenizer, template: str, rows: list[dict], seq_len: int) -> list[dict]:
    return [encode_example(tokenizer, template, r, seq_len) for r in rows]


def score_torch(models: dict, examples: dict) -> dict:
    """{model label: loader} x {split: examples} -> {split: {label: loss}}, one model in memory at a time."""
    import gc

    out = {split: {} for split in examples}
    for label, load in models.items():
        model = load()
        for split, ex in examples.items():
            out[split][label] = torch_loss(model, ex)
        del model
        gc.collect()
    return out


def score_matrix(torch_models: dict, scorer: OnnxScorer, examples: dict, adapters: dict) -> dict:
    """Every eval split scored by every PyTorch reference and by the shipped ONNX model, alone and
    with each adapter (its own and the others', so a wrong adapter shows). Keys per split:
    each torch label, quantized_base, adapter_NAME, best, own_adapter_gain_loss,
    quantization_cost_ppl, and gain_vs_rtn_ppl where an RTN reference was scored."""
    result = {}
    for split, scores in score_torch(torch_models, examples).items():
        scores["quantized_base"] = scorer.loss(examples[split])
        for name, arrays in adapters.items():
            scores[f"adapter_{name}"] = scorer.loss(examples[split], arrays)
        candidates = ["quantized_base"] + [f"adapter_{n}" for n in adapters]
        scores["best"] = min(candidates, key=lambda c: scores[c]["loss"]).removeprefix("adapter_")
        own = scores[f"adapter_{split}"]["loss"]
        scores["own_adapter_gain_loss"] = round(scores["quantized_base"]["loss"] - own, 5)
        scores["quantization_cost_ppl"] = round(scores["quantized_base"]["perplexity"]
                                                - scores["float_base"]["perplexity"], 4)
        if "rtn_reference_torch" in scores:
            scores["gain_vs_rtn_ppl"] = round(scores["rtn_reference_torch"]["perplexity"]
                                              - scores["quantized_base_torch"]["perplexity"], 4)
        result[f"on_{split}"] = scores
    result["own_adapter_best_everywhere"] = all(result[f"on_{n}"]["best"] == n for n in adapters)
    return result


def float_lora_gap(result: dict, load_float_lora, examples: dict) -> None:
    """What int4 costs after finetuning, per split: the shipped int4 model + that split's adapter
    against the float base + a LoRA trained on it with the same data, steps and seed
    (`load_float_lora(split)`), as a perplexity gap in % (positive: int4 is worse)."""
    import gc

    for split, ex in examples.items():
        model = load_float_lora(split)
        scores = result[f"on_{split}"]
        scores["float_lora"] = torch_loss(model, ex)
        del model
        gc.collect()
        ratio = scores[f"adapter_{split}"]["perplexity"] / scores["float_lora"]["perplexity"]
        scores["int4_lora_gap_pct"] = round(100 * (ratio - 1), 3)


def headline(result: dict, names: list[str]) -> dict:
    """The figures a person compares between runs (DVCLive's summary): per split, the float base's,
    the shipped int4 base's and the int4 base + own adapter's perplexity, that adapter's loss, and
    the float base + float LoRA's perplexity with int4's gap to it."""
    out = {}
    for split in names:
        scores = result[f"on_{split}"]
        out[f"{split}/float_ppl"] = scores["float_base"]["perplexity"]
        out[f"{split}/int4_ppl"] = scores["quantized_base"]["perplexity"]
        out[f"{split}/int4_adapter_ppl"] = scores[f"adapter_{split}"]["perplexity"]
        out[f"{split}/int4_adapter_loss"] = scores[f"adapter_{split}"]["loss"]
        if "float_lora" in scores:
            out[f"{split}/float_lora_ppl"] = scores["float_lora"]["perplexity"]
            out[f"{split}/int4_lora_gap_pct"] = scores["int4_lora_gap_pct"]
    if "kernel_guard" in result:
        out["guard/top1_agreement_min"] = result["kernel_guard"]["top1_agreement_min"]
        out["guard/mean_kl_max"] = result["kernel_guard"]["mean_kl_max"]
    return out

"""The shipped ONNX graph scored in full: next-token log-probs with or without an adapter, and the
kernel guard: the shipped int4 kernel against fp32 on the same weights (MatMulNBits accuracy_level 0).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ondevice import onnx_folder
from ondevice.text import IGNORE

LEVEL_RECORD = "accuracy_level.json"  # in the model folder: optimize's choice and the bar it held it to


def mean_loss(total: float, count: int) -> dict:
    loss = total / count if count else math.nan  # no token scored is no loss, not a loss of 0 (write_json refuses it)
    perplexity = math.exp(loss) if loss < 700 else math.inf  # (math.exp overflows past ~709)
    return {"loss": round(loss, 5), "perplexity": round(perplexity, 4), "tokens": count}


def level_record(onnx_dir: Path) -> dict:
    """What optimize decided about the shipped accuracy_level, and the agreement bar it held it to."""
    path = Path(onnx_dir) / LEVEL_RECORD
    if not path.exists():
        from ondevice.atomic import UserError

        raise UserError(f"{path} missing: {onnx_dir} predates the accuracy-level choice; run `dvc repro optimize`")
    return json.loads(path.read_text())


def with_accuracy_level(model, level: int) -> None:
    """Set every MatMulNBits node's accuracy_level (an in-memory ModelProto; weights untouched)."""
    import onnx

    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(kept + [onnx.helper.make_attribute("accuracy_level", level)])


def set_accuracy_level(onnx_dir: Path, level: int) -> None:
    """Rewrite the graph of onnx_dir/model.onnx at `level`; its external weights stay as they are."""
    import onnx

    path = Path(onnx_dir) / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    with_accuracy_level(model, level)
    onnx.save(model, str(path))


def empty_past(session, decoder: dict) -> dict:
    """The KV-cache feeds of a first step: zero-length past for every layer, in the graph's dtype
    (fp32 on CPU builds, fp16 on CUDA builds)."""
    past = {}
    for i in session.get_inputs():
        if i.name.startswith("past_key_values"):
            shape = (1, decoder["num_key_value_heads"], 0, decoder["head_size"])
            past[i.name] = np.zeros(shape, np.float16 if i.type == "tensor(float16)" else np.float32)
    return past


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
    if accuracy_level is not None:
        with_accuracy_level(model, accuracy_level)
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
        from ondevice.runtime.cuda_check import model_providers, require_cuda_provider

        # a CUDA build is scored on the GPU, never silently on CPU; on_cpu asks for the CPU kernels on purpose
        providers = ["CPUExecutionProvider"]
        if "cuda" in model_providers(onnx_dir) and not on_cpu:
            require_cuda_provider(f"{onnx_dir} was built for optimize.provider=cuda")
            # the CUDA EP, checked above; onnxruntime itself keeps a few shape nodes of the graph on the CPU
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.session = ort.InferenceSession(scoring_graph(Path(onnx_dir), accuracy_level), opts, providers=providers)
        self.provider = self.session.get_providers()[0].removesuffix("ExecutionProvider").lower()
        dec = onnx_folder.decoder(onnx_dir)
        self.window = (dec.get("sliding_window") or {}).get("window_size") or 0
        self.past = empty_past(self.session, dec)

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
        return mean_loss(total, count)


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


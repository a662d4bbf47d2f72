"""Issue #32: does a LoRA that starts from the int4 residual win back what int4 costs after finetuning?

LoftQ (Li et al., 2023) initialises LoRA so that the quantized base plus B·A starts close to the float
weight. Here the base stays the shipped AWQ checkpoint (no alternation between quantizing and
fitting), and on every target projection B·A starts as the rank-r SVD of W_float - W_int4, scaled
so that the LoRA's output equals it exactly; then the same steps, data and seed as the finetune stage.

Each variant trains on one adapter's split and is scored in PyTorch on the dequantized int4 base
(evaluate's `quantized_base_torch` equals the ONNX build's loss to 1e-5) over that split's eval rows,
beside the float LoRA stage's own loss. Not a DVC stage: `python studies/loftq_init.py` after
`make repro`; writes reports/loftq_init.json.
"""
import json
import math
from pathlib import Path

import click
import torch

from ondevice import finetune
from ondevice import params as P
from ondevice.atomic import write_json
from ondevice.checkpoint import load_dequantized
from ondevice.cli import params_option
from ondevice.data import read_jsonl
from ondevice.measure.evaluate import encode_rows, torch_loss


def float_target(float_state: dict, quantized, name: str) -> torch.Tensor:
    """The float projection in the int4 model's coordinates. AWQ divided the input norm's weight by a
    per-channel scale s and multiplied the projection's columns by it (and scaled v_proj's rows by
    1/s_o for o_proj): the float weight times diag(s), with each row's scale fitted by least squares."""
    layer = int(name.split(".layers.")[1].split(".")[0])
    norm = f"model.layers.{layer}.input_layernorm.weight"
    s = float_state[norm].float() / quantized.get_parameter(norm).detach().float()
    target = float_state[name + ".weight"].float() * s
    w_q = quantized.get_parameter(name + ".weight").detach().float()
    rows = (target * w_q).sum(1) / (target * target).sum(1)  # 1 for q/k; 1 / s_o for v_proj
    return target * rows[:, None]


def residual_init(float_state: dict):
    """A lora_model that starts every LoRA at the rank-r SVD of its projection's int4 residual
    (attention input projections: the ones whose input scale AWQ folded into the input norm)."""
    plain = finetune.lora_model

    def lora_model(base, p):
        assert set(p["target_modules"]) <= {"q_proj", "k_proj", "v_proj"}, p["target_modules"]
        model = plain(base, p)
        scale = p["alpha"] / p["r"]
        for name, module in model.named_modules():
            if not hasattr(module, "lora_A"):
                continue
            key = name.split("base_model.model.", 1)[1]
            residual = float_target(float_state, base, key) - module.base_layer.weight.detach().float()
            u, s, vt = torch.linalg.svd(residual, full_matrices=False)
            root = torch.sqrt(s[: p["r"]] / scale)
            with torch.no_grad():  # scale * B @ A == U_r S_r V_r^T
                module.lora_B["default"].weight.copy_(u[:, : p["r"]] * root)
                module.lora_A["default"].weight.copy_(root[:, None] * vt[: p["r"]])
        return model

    return lora_model


@click.command()
@params_option
@click.option("--adapter", "name", default="travel", show_default=True)
@click.option("--out", default="reports/loftq_init.json", show_default=True)
def main(params_path, name, out):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    params = P.load(params_path)
    cfg, e = P.adapter(params, name), params["evaluate"]
    tokenizer = AutoTokenizer.from_pretrained("models/base")
    rows = read_jsonl(Path(f"data/prepared/{name}/train.jsonl"))
    eval_rows = read_jsonl(Path(f"data/prepared/{name}/eval.jsonl"))[: e["max_rows"]]
    examples = encode_rows(tokenizer, cfg["template"], eval_rows, cfg["seq_len"])
    float_state = AutoModelForCausalLM.from_pretrained("models/base", dtype=torch.float32).state_dict()
    committed = json.loads(Path("metrics/evaluate.json").read_text())[f"on_{name}"]
    result = {"adapter": name, "rows": len(examples), "float_lora_loss": committed["float_lora"]["loss"],
              "committed_int4_adapter_loss": committed[f"adapter_{name}"]["loss"], "variants": {}}
    plain = finetune.lora_model
    for variant, init in (("default", plain), ("residual_svd", residual_init(float_state))):
        finetune.lora_model = init
        model, history, summary = finetune.train(Path("models/quantized"), tokenizer, rows, cfg)
        finetune.lora_model = plain
        loss = torch_loss(model.eval(), examples)["loss"]
        gap = math.exp(loss - result["float_lora_loss"]) - 1
        result["variants"][variant] = {"eval_loss": loss, "perplexity": round(math.exp(loss), 3),
                                       "gap_to_float_lora_pct": round(100 * gap, 2),
                                       "train_loss_first": summary["train_loss_first"],
                                       "train_loss_last": summary["train_loss_last"], "seconds": summary["seconds"]}
        click.echo(f"{variant}: eval loss {loss} (ppl {math.exp(loss):.2f}), {100 * gap:.1f} % over float LoRA")
    base_loss = torch_loss(load_dequantized(Path("models/quantized"), torch.float32, "cpu").eval(), examples)["loss"]
    result["int4_base_loss"] = base_loss
    write_json(out, result)


if __name__ == "__main__":
    main()

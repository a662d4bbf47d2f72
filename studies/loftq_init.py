"""Issue #32: does a LoRA that starts from the int4 residual win back what int4 costs after finetuning?

LoftQ (Li et al., 2023) initialises LoRA so that the quantized base plus B·A starts close to the float
weight. Here the base stays the shipped AWQ checkpoint (no alternation between quantizing and
fitting), and on every target projection B·A starts as the rank-r SVD of W_float - W_int4, scaled
so that the LoRA's output equals it exactly; then the same steps, data and seed as the finetune stage.

The start that studies/lora_variants.py trains as its `residual_svd` variant
(`python studies/lora_variants.py --variant residual_svd`); the first measurement, against peft's
default start, is reports/loftq_init.json.
"""

import torch

from ondevice import finetune


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

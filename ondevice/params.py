"""params.yaml: load it and check it against a schema before any heavy work.

The schema is plain data: for each key its type and, where it matters, its allowed values or range.
A bad value fails with one line naming the key, the value and what is allowed.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from ondevice.atomic import UserError

ALGORITHMS = ("awq", "rtn", "gptq")
DEVICES = ("auto", "cpu", "cuda")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                "qkv_proj", "gate_up_proj")  # the last two: fused projections of Phi-3

# key -> (type, constraint). constraint: tuple of allowed values, (lo, hi) range via dict, or None.
SCHEMA: dict[str, dict[str, tuple]] = {
    "model": {"source": (str, None)},
    "data": {"eval_fraction": (float, {"min": 0.01, "max": 0.9}), "seed": (int, {"min": 0})},
    "quantize": {
        "algorithm": (str, ALGORITHMS),
        "bits": (int, (4,)),
        "group_size": (int, (16, 32, 64, 128, 256)),
        "symmetric": (bool, None),
        "calibration_samples": (int, {"min": 1, "max": 4096}),
        "calibration_seq_len": (int, {"min": 16, "max": 8192}),
        "awq_grid": (int, {"min": 2, "max": 100}),
        "awq_clip": (bool, None),
        "device": (str, DEVICES),
        "calibration": (str, None),
    },
    "reference": {"algorithms": (list, ALGORITHMS + ("empty_ok",))},
    "finetune": {
        "r": (int, {"min": 1, "max": 512}),
        "alpha": (float, {"min": 0.0}),
        "dropout": (float, {"min": 0.0, "max": 0.9}),
        "target_modules": (list, LORA_TARGETS),
        "lr": (float, {"min": 1e-7, "max": 1.0}),
        "max_steps": (int, {"min": 1}),
        "batch_size": (int, {"min": 1, "max": 1024}),
        "seq_len": (int, {"min": 16}),
        "seed": (int, {"min": 0}),
        "template": (str, None),
        "device": (str, DEVICES),
    },
    "adapters": {},  # name -> {data: path, any finetune key}: checked by _check_adapters
    "optimize": {
        "device": (str, ("cpu", "cuda")),
        "provider": (str, ("cpu", "cuda")),
        "precision": (str, ("int4",)),
        "int4_block_size": (int, (16, 32, 64, 128, 256)),
        "int4_accuracy_level": (int, (0, 1, 2, 3, 4)),
        "prune_lm_head": (bool, None),
        "intra_op_threads": (int, {"min": 0, "max": 256}),
        "lora_targets": (list, LORA_TARGETS),
    },
    "evaluate": {
        "max_rows": (int, {"min": 1}),
        "generate_rows": (int, {"min": 0}),
        "max_new_tokens": (int, {"min": 1, "max": 4096}),
        "device": (str, DEVICES),
    },
    "benchmark": {
        "prompt_tokens": (int, {"min": 1, "max": 8192}),
        "new_tokens": (int, {"min": 1, "max": 8192}),
        "runs": (int, {"min": 1, "max": 100}),
        "warmup": (int, {"min": 0, "max": 20}),
        "threads": (int, {"min": 0, "max": 256}),
        "torch_baseline": (bool, None),
        "switches": (int, {"min": 1, "max": 10000}),
        "context_lengths": (list, {"items": int, "min": 1, "max": 32768}),
        "thread_counts": (list, {"items": int, "min": 1, "max": 256}),
        "sweep_new_tokens": (int, {"min": 2, "max": 4096}),
        "profile": (bool, None),
        "llama_cpp": (bool, None),
        "builder_reference": (bool, None),
    },
    "register": {"name": (str, None), "version": (int, {"min": 1}), "description": (str, None),
                 "license": (str, None), "azure": (dict, None)},
    "azure_job": {"compute": (str, None), "experiment_name": (str, None), "environment": (str, None),
                  "remote": (str, None), "stages": (list, None)},
}
ADAPTER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Workspace coordinates only: credentials never go in params.yaml (DefaultAzureCredential finds them).
AZURE_KEYS = ("subscription_id", "resource_group", "workspace")


def _check(section: str, key: str, value, typ, constraint) -> None:
    where = f"params.yaml: {section}.{key}={value!r}"
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typ is int and isinstance(value, bool) or not isinstance(value, typ):
        raise UserError(f"{where} has type {type(value).__name__}; expected {typ.__name__}")
    if isinstance(constraint, tuple):
        values = value if isinstance(value, list) else [value]
        empty_ok, constraint = "empty_ok" in constraint, tuple(c for c in constraint if c != "empty_ok")
        if typ is list and not values and not empty_ok:
            raise UserError(f"{where} is empty; allowed: {', '.join(map(str, constraint))}")
        for v in values:
            if v not in constraint:
                raise UserError(f"{where} is not allowed; allowed: {', '.join(map(str, constraint))}")
    elif isinstance(constraint, dict):
        values = value if isinstance(value, list) else [value]
        if typ is list and not values:
            raise UserError(f"{where} is empty")
        for v in values:
            item = constraint.get("items")
            if item and (not isinstance(v, item) or isinstance(v, bool)):
                raise UserError(f"{where} holds {v!r}; expected {item.__name__} values")
            if "min" in constraint and v < constraint["min"]:
                raise UserError(f"{where} is below the minimum {constraint['min']}")
            if "max" in constraint and v > constraint["max"]:
                raise UserError(f"{where} is above the maximum {constraint['max']}")


def validate(params: dict) -> dict:
    if not isinstance(params, dict):
        raise UserError("params.yaml: top level must be a mapping of sections")
    for section in params:
        if section not in SCHEMA:
            raise UserError(f"params.yaml: unknown section {section!r}; known: {', '.join(SCHEMA)}")
    for section, keys in SCHEMA.items():
        given = params.get(section)
        if not isinstance(given, dict):
            raise UserError(f"params.yaml: section {section!r} is missing or not a mapping")
        if section == "adapters":
            continue
        for key in given:
            if key not in keys:
                raise UserError(f"params.yaml: unknown key {section}.{key}; known: {', '.join(keys)}")
        for key, (typ, constraint) in keys.items():
            if key not in given:
                raise UserError(f"params.yaml: missing key {section}.{key}")
            _check(section, key, given[key], typ, constraint)
    for key, value in params["register"]["azure"].items():
        if key not in AZURE_KEYS:
            raise UserError(f"params.yaml: unknown key register.azure.{key}; known: {', '.join(AZURE_KEYS)} "
                            "(credentials belong in `az login` or the environment, not in params)")
        if value is not None and not isinstance(value, str):
            raise UserError(f"params.yaml: register.azure.{key}={value!r} must be a string or empty")
    _check_template("finetune.template", params["finetune"]["template"])
    _check_adapters(params)
    return params


def _check_template(where: str, template: str) -> None:
    if template != "chat" and ("{prompt}" not in template or "{response}" not in template):
        raise UserError(
            f"params.yaml: {where}={template!r} lacks a placeholder; "
            "use 'chat' or a string containing both {prompt} and {response}"
        )


def _check_adapters(params: dict) -> None:
    adapters = params["adapters"]
    if not adapters:
        raise UserError("params.yaml: adapters is empty; list at least one, e.g. travel: {data: data/travel_qa.jsonl}")
    for name, spec in adapters.items():
        if not isinstance(name, str) or not ADAPTER_NAME.match(name) or name == "none":
            raise UserError(f"params.yaml: adapter name {name!r} must be lower-case letters, digits, - or _ "
                            "(it names files and DVC stages), and not 'none'")
        if not isinstance(spec, dict) or "data" not in spec:
            raise UserError(f"params.yaml: adapters.{name} needs a data file, e.g. {name}: {{data: data/{name}.jsonl}}")
        for key, value in spec.items():
            if key == "data":
                _check("adapters", f"{name}.data", value, str, None)
            elif key in SCHEMA["finetune"]:
                _check("adapters", f"{name}.{key}", value, *SCHEMA["finetune"][key])
            else:
                raise UserError(f"params.yaml: unknown key adapters.{name}.{key}; known: data, "
                                f"{', '.join(SCHEMA['finetune'])}")
        config = adapter_config(params, name)
        _check_template(f"adapters.{name}.template", config["template"])
        missing = [t for t in config["target_modules"] if t not in params["optimize"]["lora_targets"]]
        if missing:
            raise UserError(f"params.yaml: adapters.{name} trains {', '.join(missing)}, which optimize.lora_targets "
                            "lacks; add it there (the base graph gets LoRA inputs only for those projections)")
    if params["quantize"]["calibration"] not in adapters:
        raise UserError(f"params.yaml: quantize.calibration={params['quantize']['calibration']!r} is not an adapter; "
                        f"use one of {', '.join(adapters)}")


def adapter_config(params: dict, name: str) -> dict:
    """One adapter's effective settings: the finetune defaults overridden by adapters.<name>."""
    if name not in params["adapters"]:
        raise UserError(f"no adapter {name!r} in params.yaml; known: {', '.join(params['adapters'])}")
    return {**params["finetune"], **params["adapters"][name]}


def load(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found; run from the repository root or pass --params")
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    return validate(params)


def check_model_fit(params: dict, config) -> None:
    """Checks that need the model's config: group size divides the matrices, seq_len fits the context."""
    gs = params["quantize"]["group_size"]
    for name in ("hidden_size", "intermediate_size"):
        size = getattr(config, name, None)
        if size and size % gs:
            divisors = [g for g in (16, 32, 64, 128, 256) if size % g == 0 and config.hidden_size % g == 0]
            raise UserError(
                f"params.yaml: quantize.group_size={gs} does not divide the model's {name}={size}; "
                f"use one of {divisors}"
            )
    ctx = getattr(config, "max_position_embeddings", None)
    lengths = {"finetune.seq_len": params["finetune"]["seq_len"],
               "quantize.calibration_seq_len": params["quantize"]["calibration_seq_len"]}
    lengths.update({f"adapters.{n}.seq_len": a["seq_len"] for n, a in params["adapters"].items() if "seq_len" in a})
    for key, value in lengths.items():
        if ctx and value > ctx:
            raise UserError(f"params.yaml: {key}={value} exceeds the model's context {ctx}")

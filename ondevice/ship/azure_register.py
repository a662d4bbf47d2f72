"""The Azure ML model asset (tags, upload) for `make register`: not in azure.py, which the model stage runs."""
from __future__ import annotations

import json
from pathlib import Path

from ondevice.atomic import UserError
from ondevice.ship.azure import credentials_checked, with_retries
from ondevice.ship.register import git_commit, params_hash

KEY_METRICS = {  # tag name -> (metrics file, dotted key); {n} is each adapter's name
    "quant_algorithm": ("evaluate", "quantization.algorithm"),
    "model_mb": ("optimize", "model_mb"),
    "decode_tok_s_cpu_base": ("benchmark", "ort_int4.decode_tok_s"),
    "eval_ppl_{n}_int4_base": ("evaluate", "on_{n}.quantized_base.perplexity"),
    "eval_ppl_{n}_int4_adapter": ("evaluate", "on_{n}.adapter_{n}.perplexity"),
    "eval_loss_{n}_int4_adapter": ("evaluate", "on_{n}.adapter_{n}.loss"),
    "decode_tok_s_cpu_{n}": ("benchmark", "ort_int4_{n}.decode_tok_s"),
    "adapter_mb_{n}": ("adapter/{n}", "adapter_mb"),
}


def _dig(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


def tags(metrics_dir: Path, params: dict) -> dict:
    out = {"git_commit": git_commit() or "unknown", "params_hash": params_hash(params),
           "base_model": params["model"]["source"], "pipeline": "ondevice"}
    names = list(params["adapters"])
    files = {}  # each metrics file read once
    for tag, (file, key) in KEY_METRICS.items():
        for n in names if "{n}" in tag else [None]:
            path = Path(metrics_dir) / f"{file.format(n=n)}.json"
            if path not in files:
                if not path.exists():
                    raise UserError(f"{path} is missing (Azure tag {tag.format(n=n)}); "
                                    "run `make repro` before registering")
                files[path] = json.loads(path.read_text())
            try:
                out[tag.format(n=n)] = str(_dig(files[path], key.format(n=n)))
            except (KeyError, TypeError):  # a renamed metric must not drop a tag silently
                raise UserError(f"{path} has no {key.format(n=n)} for Azure tag {tag.format(n=n)}: update "
                                "KEY_METRICS in ondevice/ship/azure_register.py to the metric's new name") from None
    out["adapters"] = ",".join(names)
    return out


def model_asset(model_dir: Path, params: dict, metrics_dir: Path, version: str | None = None):
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Model

    if not (Path(model_dir) / "genai_config.json").exists():
        raise UserError(f"{model_dir} has no genai_config.json; run `make repro` before registering")
    reg = params["register"]
    return Model(name=reg["name"], version=str(version or reg["version"]), path=str(model_dir),
                 type=AssetTypes.CUSTOM_MODEL, description=reg["description"], tags=tags(metrics_dir, params))


def describe(asset, bundle: Path) -> dict:
    """Exactly what would be created: the asset's fields and every file it uploads."""
    files = sorted(str(p.relative_to(bundle)) for p in Path(bundle).rglob("*") if p.is_file())
    return {"name": asset.name, "version": asset.version, "type": asset.type, "description": asset.description,
            "tags": asset.tags, "files": files, "bytes": sum((Path(bundle) / f).stat().st_size for f in files)}


def existing_versions(ml_client, name: str) -> list[int]:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return sorted(int(m.version) for m in with_retries(lambda: list(ml_client.models.list(name=name)))
                      if str(m.version).isdigit())
    except ResourceNotFoundError:
        return []


def upload(ml_client, asset, next_free: bool) -> str:
    """Create the asset; if its version exists, fail clearly or take the next free version."""
    with credentials_checked():
        versions = existing_versions(ml_client, asset.name)
    if int(asset.version) in versions:
        if not next_free:
            raise UserError(f"model {asset.name} version {asset.version} already exists in the workspace; "
                            "bump register.version or pass --next-version")
        asset.version = str(max(versions) + 1)
    created = with_retries(lambda: ml_client.models.create_or_update(asset))
    return str(created.version)

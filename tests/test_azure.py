"""Azure ML registration up to the network boundary: real azure-ai-ml entities and client, a stub
only where the service would answer (no Azure endpoint is reachable here)."""
import json
import subprocess
import sys
import types

import pytest
import yaml
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError

from conftest import ROOT
from ondevice.atomic import UserError
from ondevice.ship import azure, azure_register

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
WS_ENV = {"AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000", "AZURE_RESOURCE_GROUP": "rg-travel",
          "AZUREML_WORKSPACE_NAME": "ws-travel"}


def where(onnx_dir, card):
    return ["--onnx", str(onnx_dir), "--adapters", str(onnx_dir / "adapters"), "--card", str(card)]


@pytest.fixture()
def card(tmp_path):
    path = tmp_path / "model_card.md"
    path.write_text("---\nlicense: apache-2.0\n---\n\n# ft-for-travel\n")
    return path


@pytest.fixture()
def metrics_dir(tmp_path):
    d = tmp_path / "metrics"
    d.mkdir()
    others = [n for n in PARAMS["adapters"] if n not in ("travel", "cooking")]  # every adapter params.yaml lists
    (d / "evaluate.json").write_text(json.dumps({
        "on_travel": {"adapter_travel": {"loss": 3.1, "perplexity": 22.2}, "quantized_base": {"perplexity": 60.2}},
        "on_cooking": {"adapter_cooking": {"loss": 2.9, "perplexity": 18.2}, "quantized_base": {"perplexity": 50.1}},
        **{f"on_{n}": {f"adapter_{n}": {"loss": 2.5, "perplexity": 12.2}, "quantized_base": {"perplexity": 40.0}}
           for n in others},
        "quantization": {"algorithm": "awq"}}))
    (d / "optimize.json").write_text(json.dumps({"model_mb": 88.2}))
    (d / "benchmark.json").write_text(json.dumps({"ort_int4": {"decode_tok_s": 238.0}, "ort_int4_travel": {
        "decode_tok_s": 205.0}, "ort_int4_cooking": {"decode_tok_s": 210.0},
        **{f"ort_int4_{n}": {"decode_tok_s": 215.0} for n in others}}))
    (d / "adapter").mkdir()
    for name in PARAMS["adapters"]:
        (d / "adapter" / f"{name}.json").write_text(json.dumps({"adapter_mb": 5.9}))
    return d


def test_a_renamed_or_missing_metric_is_an_error_not_a_dropped_tag(metrics_dir):
    (metrics_dir / "optimize.json").write_text(json.dumps({"model_size_mb": 88.2}))
    with pytest.raises(UserError, match=r"optimize.json has no model_mb for Azure tag model_mb: update KEY_METRICS"):
        azure_register.tags(metrics_dir, PARAMS)
    (metrics_dir / "optimize.json").unlink()
    with pytest.raises(UserError, match=r"optimize.json is missing \(Azure tag model_mb\); run `make repro`"):
        azure_register.tags(metrics_dir, PARAMS)


def test_asset_is_a_custom_model_with_key_metric_tags(onnx_dir, metrics_dir):
    asset = azure_register.model_asset(onnx_dir, PARAMS, metrics_dir)
    assert type(asset).__name__ == "Model" and asset.type == "custom_model"
    assert asset.name == PARAMS["register"]["name"] and asset.version == str(PARAMS["register"]["version"])
    assert asset.tags["eval_ppl_travel_int4_adapter"] == "22.2" and asset.tags["quant_algorithm"] == "awq"
    assert asset.tags["eval_ppl_cooking_int4_base"] == "50.1" and asset.tags["adapters"] == ",".join(PARAMS["adapters"])
    assert len(asset.tags["params_hash"]) == 16 and "git_commit" in asset.tags
    described = azure_register.describe(asset, onnx_dir)
    assert "adapters/travel.onnx_adapter" in described["files"] and "genai_config.json" in described["files"]


def test_dry_run_prints_every_file_and_tag_and_no_secret(onnx_dir, metrics_dir, card):
    env = {**WS_ENV, "AZURE_CLIENT_SECRET": "s3cr3t-value", "PATH": __import__("os").environ["PATH"]}
    out = subprocess.run([sys.executable, str(ROOT / "scripts/azure_register.py"), *where(onnx_dir, card),
                          "--metrics-dir", str(metrics_dir), "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["type"] == "custom_model" and "adapters/travel.onnx_adapter" in shown["files"]
    assert "README.md" in shown["files"]  # the model card travels with the model
    assert "s3cr3t-value" not in out.stdout + out.stderr


def test_upload_without_a_model_card_is_one_line(onnx_dir, metrics_dir, tmp_path):
    env = {**WS_ENV, "PATH": __import__("os").environ["PATH"]}
    out = subprocess.run([sys.executable, str(ROOT / "scripts/azure_register.py"), *where(onnx_dir, tmp_path / "no.md"),
                          "--metrics-dir", str(metrics_dir), "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        f"error: model card {tmp_path / 'no.md'} missing; run `dvc repro -s register` (it writes the card)"]


def test_missing_workspace_is_one_line_exit_2(onnx_dir, metrics_dir, card):
    env = {"PATH": __import__("os").environ["PATH"], "HOME": "/nonexistent"}
    out = subprocess.run([sys.executable, str(ROOT / "scripts/azure_register.py"), *where(onnx_dir, card),
                          "--metrics-dir", str(metrics_dir)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: Azure ML workspace not configured: set register.azure.subscription_id or $AZURE_SUBSCRIPTION_ID, "
        "register.azure.resource_group or $AZURE_RESOURCE_GROUP, register.azure.workspace or $AZUREML_WORKSPACE_NAME"]


def test_workspace_from_params_beats_environment():
    p = json.loads(json.dumps(PARAMS))
    p["register"]["azure"]["workspace"] = "from-params"
    assert azure.workspace(p, WS_ENV) == {"subscription_id": WS_ENV["AZURE_SUBSCRIPTION_ID"],
                                          "resource_group": "rg-travel", "workspace": "from-params"}


def test_real_client_construction_points_at_the_workspace():
    ml = azure.client({"subscription_id": WS_ENV["AZURE_SUBSCRIPTION_ID"], "resource_group": "rg-travel",
                       "workspace": "ws-travel"})
    assert ml.subscription_id == WS_ENV["AZURE_SUBSCRIPTION_ID"] and ml.workspace_name == "ws-travel"
    assert hasattr(ml.models, "create_or_update")


def test_secrets_are_refused_in_params():
    from ondevice import params as P

    p = json.loads(json.dumps(PARAMS))
    p["register"]["azure"]["client_secret"] = "x"
    with pytest.raises(UserError, match="unknown key register.azure.client_secret"):
        P.validate(p)


class StubModels:
    """Stands in for the Azure service at the network boundary."""

    def __init__(self, versions=(), failures=()):
        self.versions, self.failures, self.created = list(versions), list(failures), []

    def list(self, name):
        if not self.versions:
            raise ResourceNotFoundError("no such model")
        return [types.SimpleNamespace(version=str(v)) for v in self.versions]

    def create_or_update(self, asset):
        if self.failures:
            raise self.failures.pop(0)
        self.created.append(asset)
        return types.SimpleNamespace(version=asset.version)


def _http_error(status):
    e = HttpResponseError(message=f"status {status}")
    e.status_code = status
    return e


def test_existing_version_fails_clearly_or_takes_next(onnx_dir, metrics_dir):
    asset = azure_register.model_asset(onnx_dir, PARAMS, metrics_dir)
    with pytest.raises(UserError, match="version 1 already exists in the workspace; bump register.version or pass"):
        azure_register.upload(types.SimpleNamespace(models=StubModels([1])), asset, next_free=False)
    stub = StubModels([1, 2])
    assert azure_register.upload(types.SimpleNamespace(models=stub), asset, next_free=True) == "3"
    assert stub.created[0].version == "3"


def test_transient_errors_are_retried_with_backoff_and_others_are_not(onnx_dir, metrics_dir, monkeypatch):
    slept = []
    monkeypatch.setattr(azure.time, "sleep", slept.append)
    asset = azure_register.model_asset(onnx_dir, PARAMS, metrics_dir)
    stub = StubModels([], [_http_error(503), _http_error(429)])
    assert azure_register.upload(types.SimpleNamespace(models=stub), asset, next_free=False) == "1"
    assert slept == [2.0, 4.0]
    with pytest.raises(HttpResponseError):
        azure_register.upload(types.SimpleNamespace(models=StubModels([], [_http_error(400)])), asset, next_free=False)


def test_rejected_credentials_are_one_clear_line(onnx_dir, metrics_dir):
    class Denied(StubModels):
        def list(self, name):
            raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")

    asset = azure_register.model_asset(onnx_dir, PARAMS, metrics_dir)
    with pytest.raises(UserError, match="Azure credentials were rejected or missing"):
        azure_register.upload(types.SimpleNamespace(models=Denied()), asset, False)

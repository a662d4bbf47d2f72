"""model.source beyond the embedded model: a local .gguf file, Azure ML assets (registry and workspace) and
the family check. Azure ML runs for real up to the network boundary: a fake MLClient stands where the
service would answer, and its download writes a real tiny model that `materialize` then converts."""
import json
import os
import shutil
import types
from pathlib import Path

import pytest
from azure.core import exceptions as az
from azure.identity import CredentialUnavailableError
from safetensors.torch import load_file

from conftest import make_tiny_model
from ondevice.atomic import UserError
from ondevice.ship import azure
from ondevice.sources import azureml_source
from ondevice.sources import model_source as ms
from ondevice.sources.embedded import embedded_gguf
from ondevice.sources.model_source import check_supported, load_config, materialize, resolve

PHI = "azureml://registries/azureml/models/Phi-3.5-mini-instruct/versions/4"
WS = {"subscription_id": "00000000-0000-0000-0000-000000000000", "resource_group": "rg-travel",
      "workspace": "ws-travel"}
PARAMS = {"register": {"azure": WS}}


class FakeAzure:
    """A client factory: what MLClient would do, minus the network. `write(folder)` lays out the asset's
    files the way `models.download` does (under <download_path>/<name>/); `error` is what the service raises."""

    def __init__(self, write=None, error=None):
        self.write, self.error, self.made, self.downloads = write, error, [], []

    def __call__(self, asset, ws):
        self.made.append((asset, ws))
        return types.SimpleNamespace(models=self)

    def download(self, name, version, download_path):
        self.downloads.append((name, version, download_path))
        if self.error is not None:
            raise self.error
        self.write(Path(download_path) / name)


def catalog_writer(template: Path):
    """The Azure AI catalog layout: weights in mlflow_model_folder/data/model, tokenizer beside it."""

    def write(root: Path):
        data = root / "mlflow_model_folder" / "data"
        shutil.copytree(template, data / "model")
        (data / "tokenizer").mkdir()
        for f in list((data / "model").glob("tokenizer*")) + list((data / "model").glob("chat_template*")):
            shutil.move(f, data / "tokenizer" / f.name)
        (root / "mlflow_model_folder" / "MLmodel").write_text("flavors:\n  hftransformersv2: {}\n")
        (data / "config.json").write_text("{}")  # a config without weights is no model folder

    return write


def bert_writer(root: Path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(root)
    (root / "tokenizer_config.json").write_text("{}")


@pytest.fixture(scope="module")
def llama_template(tmp_path_factory, tokenizer_dir):
    return make_tiny_model(tmp_path_factory.mktemp("catalog-llama"), tokenizer_dir)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ONDEVICE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


# ---- local .gguf ----------------------------------------------------------------------------------------

def test_local_gguf_file_materializes(tmp_path):
    (tmp_path / "models").mkdir()
    gguf = tmp_path / "models" / "SmolLM2.Q4_1.gguf"  # a user's path, not the wheel's
    gguf.symlink_to(embedded_gguf("embedded:smollm2-135m-instruct"))
    assert resolve(str(gguf)) == (str(tmp_path / "models"), {"gguf_file": "SmolLM2.Q4_1.gguf"})
    config = load_config(str(gguf))
    assert config.architectures is None and config.model_type == "llama"  # GGUF: mapped, not declared
    assert check_supported(config, str(gguf)) == "LlamaForCausalLM"
    facts = materialize(str(gguf), tmp_path / "out")
    assert facts["architecture"] == "LlamaForCausalLM" and facts["hidden_size"] == 576
    assert facts["num_hidden_layers"] == 30 and 130e6 < facts["parameters"] < 140e6
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in saved
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"


def test_file_that_is_not_gguf_fails_in_one_line(tmp_path):
    (tmp_path / "model.Q4_K_M.gguf").write_bytes(b"<!DOCTYPE html><html>Sign in</html>")
    with pytest.raises(UserError) as e:
        resolve(str(tmp_path / "model.Q4_K_M.gguf"))
    assert "is not a GGUF file (it starts with b'<!DO', not b'GGUF')" in one_line(e)
    with pytest.raises(UserError) as e:
        load_config(str(tmp_path / "missing.gguf"))
    assert one_line(e).endswith("no such GGUF file; give the path of a .gguf file "
                                "(e.g. /models/model.Q4_K_M.gguf) or a Hugging Face folder")


def test_truncated_gguf_fails_in_one_line(tmp_path):
    (tmp_path / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")  # right magic, nothing after
    with pytest.raises(UserError) as e:
        load_config(str(tmp_path / "cut.gguf"))
    assert one_line(e).startswith(f"model.source={tmp_path / 'cut.gguf'} could not be loaded (")


# ---- supported families -----------------------------------------------------------------------------------

@pytest.mark.parametrize("architectures,model_type,expected", [
    (None, "llama", "LlamaForCausalLM"), (None, "qwen2", "Qwen2ForCausalLM"),
    (None, "gemma3_text", "Gemma3ForCausalLM"),
    (["Phi3ForCausalLM"], "phi3", "Phi3ForCausalLM"), (["MistralForCausalLM"], "mistral", "MistralForCausalLM"),
])
def test_supported_families_pass(architectures, model_type, expected):
    assert check_supported(types.SimpleNamespace(architectures=architectures, model_type=model_type), "x") == expected


@pytest.mark.parametrize("architectures,model_type,named", [
    (["GPT2LMHeadModel"], "gpt2", "GPT2LMHeadModel"), (None, "gpt2", "GPT2LMHeadModel"),
    (["Gemma3ForConditionalGeneration"], "gemma3", "Gemma3ForConditionalGeneration"),
    (["FalconForCausalLM"], "falcon", "FalconForCausalLM"),
])
def test_unsupported_family_names_the_supported_ones(architectures, model_type, named):
    with pytest.raises(UserError) as e:
        check_supported(types.SimpleNamespace(architectures=architectures, model_type=model_type), "m")
    assert one_line(e) == (f"model.source=m is a {named}; supported families: Llama, Mistral, Phi-3, Qwen2, Qwen3, "
                           f"Gemma 3 ({', '.join(ms.SUPPORTED_ARCHITECTURES)})")


def test_unsupported_folder_fails_in_materialize_before_loading_weights(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(UserError, match=r"is a GPT2LMHeadModel; supported families: Llama, Mistral"):
        materialize(str(tmp_path / "gpt2"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- Azure ML ------------------------------------------------------------------------------------------

def test_asset_ids_parse_and_bad_ones_fail_in_one_line():
    assert azureml_source.parse(PHI) == azureml_source.Asset(PHI, "Phi-3.5-mini-instruct", "4", "azureml")
    assert azureml_source.parse("azureml:my-llama:3") == azureml_source.Asset("azureml:my-llama:3", "my-llama", "3")
    for bad in ("azureml:my-llama", "azureml:my-llama:3:4", "azureml://registries/azureml/models/phi"):
        with pytest.raises(UserError) as e:
            resolve(bad)
        assert one_line(e) == (f"model.source={bad} is not an Azure ML model id; use azureml://registries/<registry>"
                               "/models/<name>/versions/<version> or azureml:<name>:<version>")


def test_registry_asset_downloads_once_and_materializes(llama_template, cache, tmp_path, monkeypatch):
    fake = FakeAzure(write=catalog_writer(llama_template))
    monkeypatch.setattr(azureml_source, "client", fake)
    config = load_config(PHI)  # what scripts/model.py does first
    assert check_supported(config, PHI) == "LlamaForCausalLM"
    facts = materialize(PHI, tmp_path / "out")
    assert len(fake.downloads) == 1  # the second resolve found the complete cache
    assert fake.made[0][0].registry == "azureml" and fake.made[0][1] is None
    name, version, dest = fake.downloads[0]
    assert (name, version) == ("Phi-3.5-mini-instruct", "4") and ".tmp-" in dest  # downloaded aside, then renamed
    folder = Path(resolve(PHI)[0])
    assert folder == cache / "azureml/registry/azureml/Phi-3.5-mini-instruct/4/Phi-3.5-mini-instruct/" \
                              "mlflow_model_folder/data/model"
    assert (folder / "tokenizer.json").exists()  # copied in from data/tokenizer
    assert facts["architecture"] == "LlamaForCausalLM" and facts["num_hidden_layers"] == 2
    assert facts["hidden_size"] == 64
    got, want = load_file(tmp_path / "out" / "model.safetensors"), load_file(llama_template / "model.safetensors")
    assert got["model.embed_tokens.weight"].equal(want["model.embed_tokens.weight"])
    assert (tmp_path / "out" / "tokenizer.json").exists()


def test_workspace_asset_uses_the_registration_workspace(llama_template, cache):
    fake = FakeAzure(write=catalog_writer(llama_template))
    folder = azureml_source.fetch("azureml:my-llama:3", PARAMS, make_client=fake, environ=os.environ)
    assert fake.made[0][1] == WS and fake.made[0][0].registry is None
    assert (folder / "config.json").exists() and "ws-travel" in folder.parts
    env = {"AZURE_SUBSCRIPTION_ID": WS["subscription_id"], "AZURE_RESOURCE_GROUP": "rg-travel",
           "AZUREML_WORKSPACE_NAME": "ws-other", "ONDEVICE_CACHE": str(cache)}
    other = azureml_source.fetch("azureml:my-llama:3", {}, make_client=fake, environ=env)
    assert fake.made[1][1]["workspace"] == "ws-other" and other != folder and len(fake.downloads) == 2
    azureml_source.fetch("azureml:my-llama:3", {}, make_client=fake, environ=env)
    assert len(fake.downloads) == 2  # cached


def test_workspace_asset_without_a_workspace_fails_in_one_line(cache):
    with pytest.raises(UserError) as e:
        azureml_source.fetch("azureml:my-llama:3", {}, make_client=FakeAzure(), environ={})
    assert one_line(e).startswith("model.source=azureml:my-llama:3 is a workspace asset: Azure ML workspace not "
                                  "configured: set register.azure.subscription_id or $AZURE_SUBSCRIPTION_ID")


def test_real_client_for_a_workspace_asset_points_at_it():
    ml = azureml_source.client(azureml_source.parse("azureml:my-llama:3"), WS)
    assert type(ml).__name__ == "MLClient" and ml.workspace_name == "ws-travel" and hasattr(ml.models, "download")


def _http(cls, message, status=None):
    e = cls(message=message)
    e.status_code = status
    return e


@pytest.mark.parametrize("error,expected", [
    (az.ResourceNotFoundError("Model Phi-3.5-mini-instruct:4 not found"),
     f"model.source={PHI}: no model Phi-3.5-mini-instruct version 4 in registry azureml; check with `az ml model show "
     "--name Phi-3.5-mini-instruct --version 4 --registry-name azureml`"),
    (CredentialUnavailableError("DefaultAzureCredential failed to retrieve a token\nAttempted credentials: ..."),
     f"model.source={PHI}: no Azure credentials found; run `az login` or set "
     "AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET"),
    (az.ClientAuthenticationError("AADSTS7000215: Invalid client secret provided.\nTrace ID: 1"),
     f"model.source={PHI}: Azure rejected the credentials (AADSTS7000215: Invalid client secret provided.); "
     "run `az login` again or check that this identity may read registry azureml"),
    (_http(az.HttpResponseError, "(AuthorizationFailed) no read access", 403),
     f"model.source={PHI}: Azure ML refused the download ((AuthorizationFailed) no read access); "
     "check that this identity may read registry azureml"),
    (az.ServiceRequestError("Failed to resolve 'eastus.api.azureml.ms'"),
     f"model.source={PHI}: could not reach Azure ML (Failed to resolve 'eastus.api.azureml.ms'); check the network, "
     "or download the model yourself and give its folder"),
], ids=["not-found", "no-credentials", "rejected", "forbidden", "offline"])
def test_service_errors_are_one_line_and_leave_no_cache(error, expected, cache, monkeypatch):
    monkeypatch.setattr(azure.time, "sleep", lambda s: None)  # the offline case is retried first
    fake = FakeAzure(error=error)
    monkeypatch.setattr(azureml_source, "client", fake)
    with pytest.raises(UserError) as e:
        load_config(PHI)
    assert one_line(e) == expected
    assert len(fake.downloads) == (4 if isinstance(error, az.ServiceRequestError) else 1)
    assert not list(cache.rglob(azureml_source.MARKER)) and not list(cache.rglob("*.tmp-*"))


def test_download_of_an_encoder_is_not_a_causal_lm(cache, tmp_path, monkeypatch):
    source = "azureml://registries/azureml/models/bert-base-uncased/versions/1"
    monkeypatch.setattr(azureml_source, "client", FakeAzure(write=bert_writer))
    with pytest.raises(UserError) as e:
        materialize(source, tmp_path / "out")
    assert one_line(e) == (f"model.source={source} is a ['BertModel'], not a causal LM; give a chat model of a "
                           "supported family: Llama, Mistral, Phi-3, Qwen2, Qwen3, Gemma 3")


def test_download_without_a_model_folder_fails_in_one_line(cache, monkeypatch):
    def write(root):  # e.g. an ONNX or custom asset: files, but no config.json beside weights
        root.mkdir(parents=True)
        (root / "config.json").write_text("{}")
        (root / "model.onnx").write_bytes(b"\0")

    monkeypatch.setattr(azureml_source, "client", FakeAzure(write=write))
    with pytest.raises(UserError) as e:
        resolve(PHI)
    assert one_line(e).endswith("the download holds no Hugging Face model folder (config.json beside *.safetensors "
                                "or pytorch_model*.bin); give an asset of a Hugging Face causal LM")
    assert not list(cache.rglob(azureml_source.MARKER))

"""An Azure ML model asset as `model.source`: download it once, then use it as a local HF folder.

Registry assets (`azureml://registries/<registry>/models/<name>/versions/<version>`, e.g. the
Azure AI model catalog) and workspace assets (`azureml:<name>:<version>`, workspace from
`register.azure` or the environment, as for registration). Credentials are DefaultAzureCredential's
business. Catalog models nest the Hugging Face files (e.g. `<name>/mlflow_model_folder/data/model`,
tokenizer beside it in `data/tokenizer`); `fetch` finds that folder and puts the tokenizer in it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ondevice.atomic import UserError, atomic_dir

REGISTRY_ID = re.compile(r"^azureml://registries/([^/]+)/models/([^/]+)/versions/([^/]+)$")
WORKSPACE_ID = re.compile(r"^azureml:([A-Za-z0-9][A-Za-z0-9_.-]*):([A-Za-z0-9_.-]+)$")
USAGE = "use azureml://registries/<registry>/models/<name>/versions/<version> or azureml:<name>:<version>"
MARKER = "ondevice-source.json"  # written last into the cache folder: names the HF folder inside
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass(frozen=True)
class Asset:
    source: str
    name: str
    version: str
    registry: str | None = None

    def where(self, ws: dict | None) -> str:
        return f"registry {self.registry}" if self.registry else f"workspace {ws['workspace']}"


def parse(source: str) -> Asset:
    if m := REGISTRY_ID.match(source):
        return Asset(source, m.group(2), m.group(3), registry=m.group(1))
    if m := WORKSPACE_ID.match(source):
        return Asset(source, m.group(1), m.group(2))
    raise UserError(f"model.source={source} is not an Azure ML model id; {USAGE}")


def cache_root(environ=os.environ) -> Path:
    """$ONDEVICE_CACHE, else $HF_HOME/ondevice, else ~/.cache/ondevice."""
    if environ.get("ONDEVICE_CACHE"):
        return Path(environ["ONDEVICE_CACHE"]).expanduser()
    if environ.get("HF_HOME"):
        return Path(environ["HF_HOME"]).expanduser() / "ondevice"
    return Path("~/.cache/ondevice").expanduser()


def client(asset: Asset, ws: dict | None):
    """The real MLClient (a registry client asks the registry's discovery service: network)."""
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    from ondevice.ship import azure

    if asset.registry:
        return MLClient(DefaultAzureCredential(), registry_name=asset.registry)
    return azure.client(ws)


def fetch(source: str, params: dict | None = None, make_client=None, environ=os.environ) -> Path:
    """Return the local HF folder of an Azure ML asset, downloading it unless the cache has it."""
    from ondevice.ship import azure

    asset = parse(source)
    ws = None
    if not asset.registry:
        try:
            ws = azure.workspace(params or {}, environ)
        except UserError as e:
            raise UserError(f"model.source={source} is a workspace asset: {e}") from None
    scope = ["registry", asset.registry] if asset.registry else ["workspace", *ws.values()]
    final = cache_root(environ).joinpath("azureml", *scope, asset.name, asset.version)
    if not (final / MARKER).exists():  # atomic_dir: the folder appears only once complete
        with atomic_dir(final) as tmp:
            _download(asset, ws, make_client or client, tmp)
            folder = hf_folder(tmp, source)
            _add_tokenizer(folder, tmp, source)
            (tmp / MARKER).write_text(json.dumps({"source": source, "folder": str(folder.relative_to(tmp))}))
    return final / json.loads((final / MARKER).read_text())["folder"]


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def _download(asset: Asset, ws: dict | None, make_client, dest: Path) -> None:
    from azure.core import exceptions as az
    from azure.identity import CredentialUnavailableError

    from ondevice.ship.azure import with_retries

    s, where = asset.source, asset.where(ws)
    show = f"--registry-name {asset.registry}" if asset.registry else f"--workspace-name {ws['workspace']}"
    try:
        ml_client = make_client(asset, ws)
        with_retries(lambda: ml_client.models.download(name=asset.name, version=asset.version,
                                                       download_path=str(dest)))
    except az.ResourceNotFoundError:
        raise UserError(f"model.source={s}: no model {asset.name} version {asset.version} in {where}; check with "
                        f"`az ml model show --name {asset.name} --version {asset.version} {show}`") from None
    except CredentialUnavailableError:
        raise UserError(f"model.source={s}: no Azure credentials found; run `az login` or set "
                        "AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET") from None
    except az.ClientAuthenticationError as e:
        raise UserError(f"model.source={s}: Azure rejected the credentials ({_first_line(e)}); run `az login` "
                        f"again or check that this identity may read {where}") from None
    except (az.ServiceRequestError, az.ServiceResponseError) as e:
        raise UserError(f"model.source={s}: could not reach Azure ML ({_first_line(e)}); check the network, "
                        "or download the model yourself and give its folder") from None
    except az.HttpResponseError as e:
        raise UserError(f"model.source={s}: Azure ML refused the download ({_first_line(e)}); check that this "
                        f"identity may read {where}") from None


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))


def hf_folder(root: Path, source: str) -> Path:
    """The shallowest folder under root that holds config.json and weights."""
    found = sorted((p.parent for p in Path(root).rglob("config.json") if _has_weights(p.parent)),
                   key=lambda d: (len(d.parts), str(d)))
    if not found:
        raise UserError(f"model.source={source}: the download holds no Hugging Face model folder (config.json "
                        "beside *.safetensors or pytorch_model*.bin); give an asset of a Hugging Face causal LM")
    return found[0]


def _add_tokenizer(folder: Path, root: Path, source: str) -> None:
    """Catalog models keep the tokenizer in a sibling folder: copy it next to the weights."""
    if any((folder / f).exists() for f in TOKENIZER_FILES):
        return
    homes = sorted({p.parent for f in TOKENIZER_FILES for p in Path(root).rglob(f)},
                   key=lambda d: (len(d.parts), str(d)))
    if not homes:
        raise UserError(f"model.source={source}: the download holds no tokenizer ({', '.join(TOKENIZER_FILES)}); "
                        "give an asset that ships its tokenizer")
    for f in homes[0].iterdir():
        if f.is_file() and not (folder / f.name).exists():
            shutil.copy2(f, folder / f.name)

"""`make azure-job`: the pipeline as Azure ML command jobs, up to the network boundary (real azure-ai-ml
entities and spec validation, real git and dvc; a fake MLClient where the service would answer)."""
import importlib.util
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from test_pipeline import sh as pipeline_sh
from test_queue import copy_in, env_for

from conftest import ROOT
from ondevice.atomic import UserError
from ondevice.ship import azure, azure_register, variants
from ondevice.ship import azure_job as J

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
WS = {"subscription_id": "00000000-0000-0000-0000-000000000000", "resource_group": "rg-travel",
      "workspace": "ws-travel"}
WS_ENV = {"AZURE_SUBSCRIPTION_ID": WS["subscription_id"], "AZURE_RESOURCE_GROUP": "rg-travel",
          "AZUREML_WORKSPACE_NAME": "ws-travel"}
REMOTE = '[core]\n    remote = azure\n[\'remote "azure"\']\n    url = azure://ondevice/dvc\n    account_name = store\n'


def sh(cmd, cwd):
    return pipeline_sh(cmd, cwd, env_for(cwd))


def make_repo(path: Path, dvc_config: str = REMOTE) -> Path:
    """A committed repository with what a job reads: params, the Dockerfile and its pins, the DVC remote."""
    copy_in(path, "params.yaml", "requirements.txt", "requirements-nodeps.txt", "docker/Dockerfile")
    (path / ".dvc").mkdir(parents=True, exist_ok=True)
    (path / ".dvc/config").write_text(dvc_config)
    (path / ".dvc/.gitignore").write_text("/tmp\n/cache\n")
    sh("git init -q && git add -A && git commit -qm base", path)
    return path


@pytest.fixture()
def repo(tmp_path):
    return make_repo(tmp_path / "repo")


NO_CREDENTIALS = ("IDENTITY_ENDPOINT", "MSI_ENDPOINT")  # managed-identity endpoints; the rest start with AZURE


def run_script(repo, *args, **env):
    base = {k: v for k, v in env_for(repo).items() if not k.startswith("AZURE") and k not in NO_CREDENTIALS}
    return subprocess.run([sys.executable, str(ROOT / "scripts/azure_job.py"), *args], cwd=repo,
                          env={**base, **env}, capture_output=True, text=True)


def test_dry_run_prints_valid_specs_an_environment_from_docker_and_one_job_per_variant(repo, tmp_path):
    from azure.ai.ml import load_environment, load_job

    out = run_script(repo, "--dry-run", "-S", "finetune.r=8", "-S", "finetune.r=32 finetune.alpha=64",
                     AZUREML_COMPUTE="gpu-a100", AZURE_CLIENT_SECRET="s3cr3t-value", AZURE_CLIENT_ID="app",
                     AZURE_TENANT_ID="tenant", **WS_ENV)
    assert out.returncode == 0, out.stderr
    assert "s3cr3t-value" not in out.stdout + out.stderr
    assert ": not set>" not in out.stdout and "missing before" not in out.stdout  # all set: no placeholder, no list
    env, *jobs = list(yaml.safe_load_all(out.stdout))
    assert env["build"]["dockerfile_path"] == "docker/Dockerfile" and env["name"] == "ondevice-pipeline"
    context = Path(env["build"]["path"])
    assert (context / "docker/Dockerfile").read_text() == (ROOT / "docker/Dockerfile").read_text()
    assert {"requirements.txt", "requirements-nodeps.txt"} <= {p.name for p in context.iterdir()}
    assert len(jobs) == 2 and all(j["compute"] == "azureml:gpu-a100" for j in jobs)
    first, second = (j["command"] for j in jobs)
    assert f"dvc exp run -n {jobs[0]['name']} -S finetune.r=8 && dvc push -r azure" in first
    assert "-S finetune.r=32 -S finetune.alpha=64 && " in second
    assert "${{outputs.experiments}}/experiments.bundle" in first and jobs[0]["identity"]["type"] == "managed_identity"
    sha = sh("git rev-parse HEAD", repo).strip()
    code = Path(jobs[0]["code"])
    assert sh("git rev-parse HEAD", code).strip() == sha and not sh("git remote", code).strip()
    assert jobs[0]["tags"]["git_commit"] == sha and jobs[0]["experiment_name"] == "ondevice"
    assert not any(k in str(jobs) for k in J.SECRET_KEYS if k != "token")
    for i, doc in enumerate([env, *jobs]):  # azure-ai-ml's own schema accepts what we print
        path = tmp_path / f"{i}.yaml"
        path.write_text(yaml.safe_dump(doc))
        loaded = load_environment(path) if i == 0 else load_job(path)
        assert loaded.name == doc["name"]
    assert "requirements.txt has no dvc-azure" in out.stderr or "dvc-azure" in (ROOT / "requirements.txt").read_text()


def test_environment_version_follows_the_build_files_not_every_commit(repo, tmp_path):
    sha1 = J.head(repo)
    _, v1 = J.build_context(repo, sha1, "docker/Dockerfile", tmp_path / "a")
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text() + "\n")
    sh("git commit -qam params", repo)
    _, v2 = J.build_context(repo, J.head(repo), "docker/Dockerfile", tmp_path / "b")
    (repo / "requirements.txt").write_text((repo / "requirements.txt").read_text() + "dvc-azure==3.1.1\n")
    sh("git commit -qam pins", repo)
    _, v3 = J.build_context(repo, J.head(repo), "docker/Dockerfile", tmp_path / "c")
    assert v1 == v2 != v3
    assert J.build_sources("COPY --chown=1 a.txt b/ ./\nCOPY --from=x /y /z\nRUN --mount=type=bind,source=w,"
                           "target=/w \\\n  true\nADD https://x/y /z\n") == ["a.txt", "b/", "w"]


def test_variants_one_per_S_and_spaces_join_and_a_bad_one_fails_before_anything():
    assert variants.variants(["finetune.r=8", "finetune.r=32 finetune.alpha=64"], PARAMS) == [
        ["finetune.r=8"], ["finetune.r=32", "finetune.alpha=64"]]
    assert variants.variants([], PARAMS) == [[]]
    assert variants.apply(PARAMS, ["finetune.target_modules=[q_proj]"])["finetune"]["target_modules"] == ["q_proj"]
    assert variants.slug(["finetune.r=32", "finetune.alpha=64"]) == "finetune-r-32_finetune-alpha-64"
    with pytest.raises(UserError, match=r"^params.yaml: finetune.r=0 is below the minimum 1$"):
        variants.variants(["finetune.r=8", "finetune.r=0"], PARAMS)
    with pytest.raises(UserError, match="is not section.key=value"):
        variants.parse("finetune.r")


NO_COMPUTE = "no Azure ML compute cluster: set azure_job.compute in params.yaml or $AZUREML_COMPUTE"
NO_WORKSPACE = ("Azure ML workspace not configured: set register.azure.subscription_id or $AZURE_SUBSCRIPTION_ID, "
                "register.azure.resource_group or $AZURE_RESOURCE_GROUP, register.azure.workspace or "
                "$AZUREML_WORKSPACE_NAME")
NO_REMOTE = ("DVC remote 'azure' is not in the committed .dvc/config; `dvc remote add azure "
             "azure://<container>/<path>`, `dvc remote modify azure account_name <account>`, commit .dvc/config "
             "(or set azure_job.remote)")
NO_CREDENTIALS_FOUND = ("no Azure credentials found here (looked for locally, Azure not asked); run `az login` or set "
                        "AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET")


def test_a_real_run_with_something_missing_refuses_in_one_line_before_azure(tmp_path):
    repo = make_repo(tmp_path / "r", "[core]\n")  # nothing configured at all
    for env, message in (({}, NO_COMPUTE), ({"AZUREML_COMPUTE": "gpu"}, NO_WORKSPACE),
                         ({"AZUREML_COMPUTE": "gpu", **WS_ENV}, NO_REMOTE)):
        out = run_script(repo, **env)
        assert out.returncode == 2 and out.stderr.strip().splitlines() == [f"error: {message}"], out.stderr
        assert not out.stdout


def script_main():
    """scripts/azure_job.py's click command, in this process (so that a test can stand in for Azure)."""
    spec = importlib.util.spec_from_file_location("azure_job_script", ROOT / "scripts/azure_job.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_dry_run_with_nothing_configured_shows_placeholders_and_every_fix_and_asks_azure_nothing(
        tmp_path, monkeypatch):
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential
    from click.testing import CliRunner

    for key in [k for k in os.environ if k.startswith("AZURE") or k in NO_CREDENTIALS]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path / "no-az-login"))

    def no_azure(*args, **kwargs):
        raise AssertionError("an Azure client was constructed")

    for owner, name in ((azure, "client"), (MLClient, "__init__"), (DefaultAzureCredential, "__init__")):
        monkeypatch.setattr(owner, name, no_azure)
    main, run = script_main(), CliRunner().invoke
    bare = make_repo(tmp_path / "bare", "[core]\n")
    out = run(main, ["--repo", str(bare), "--params", str(bare / "params.yaml"), "--dry-run", "-S", "finetune.r=8"])
    assert out.exit_code == 0 and out.exception is None, out.output
    env, job = yaml.safe_load_all(out.stdout)  # the list is YAML comments: the output still loads
    assert env["name"] == "ondevice-pipeline" and "-S finetune.r=8 && dvc push -r azure" in job["command"]
    assert job["compute"] == "azureml:<AZUREML_COMPUTE: not set>" == "azureml:" + J.placeholder(J.COMPUTE_ENV)
    specs, listed = out.stdout.split("# missing before a real submission:\n")
    assert [line.removeprefix("#   - ") for line in listed.splitlines()] == [
        NO_COMPUTE, NO_WORKSPACE, NO_REMOTE, NO_CREDENTIALS_FOUND]
    # the stand-ins do catch a client: a real run, everything configured, reaches one
    monkeypatch.setenv("AZUREML_COMPUTE", "gpu")
    for key, value in WS_ENV.items():
        monkeypatch.setenv(key, value)
    ready = make_repo(tmp_path / "ready")
    out = run(main, ["--repo", str(ready), "--params", str(ready / "params.yaml")])
    assert isinstance(out.exception, AssertionError) and "Azure client" in str(out.exception)


@pytest.mark.parametrize("env, profile, found", [
    ({}, None, False),
    ({"AZURE_CLIENT_ID": "a", "AZURE_TENANT_ID": "t", "AZURE_CLIENT_SECRET": "s"}, None, True),
    ({"AZURE_CLIENT_ID": "a", "AZURE_CLIENT_SECRET": "s"}, None, False),  # no tenant: not a service principal
    ({"IDENTITY_ENDPOINT": "http://localhost:1"}, None, True),
    ({}, '\ufeff{"subscriptions": [{"id": "s"}]}', True),  # `az login` (the CLI writes a BOM)
    ({}, '{"subscriptions": []}', False),  # after `az logout`
    ({}, "not json", False),
])
def test_dry_run_looks_for_credentials_locally(tmp_path, env, profile, found):
    if profile is not None:
        (tmp_path / "azureProfile.json").write_text(profile, encoding="utf-8")
    call = lambda: J.local_credentials({"AZURE_CONFIG_DIR": str(tmp_path), **env})  # noqa: E731
    if found:
        call()
    else:
        with pytest.raises(UserError) as e:
            call()
        assert str(e.value) == NO_CREDENTIALS_FOUND


@pytest.mark.parametrize("config, message", [
    ("[core]\n", "DVC remote 'azure' is not in the committed .dvc/config"),
    (REMOTE + "    account_key = abc\n", "DVC remote 'azure' has account_key in the committed .dvc/config"),
    ("['remote \"azure\"']\n    url = /mnt/store\n", "is the local path /mnt/store, which the job cannot reach"),
])
def test_remote_must_be_committed_reachable_and_keyless(tmp_path, config, message):
    repo = make_repo(tmp_path / "r", config)
    with pytest.raises(UserError, match=message):
        J.remote_url(repo, J.head(repo), "azure")


class FakeML:
    """Stands in for MLClient at the network boundary."""

    def __init__(self, missing=(), auth=False, failures=()):
        self.missing, self.auth, self.failures, self.created = set(missing), auth, list(failures), []
        self.workspaces = types.SimpleNamespace(get=lambda name: self._get("workspace", name))
        self.compute = types.SimpleNamespace(get=lambda name: self._get("compute", name))
        self.jobs = types.SimpleNamespace(create_or_update=self._create, download=self._download)
        self.bundle = None

    def _get(self, kind, name):
        if self.auth:
            raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")
        if kind in self.missing:
            raise ResourceNotFoundError(f"{kind} {name} not found")
        return types.SimpleNamespace(name=name)

    def _create(self, job):
        if self.failures:
            raise self.failures.pop(0)
        self.created.append(job)
        return types.SimpleNamespace(name=job.name, studio_url=f"https://ml.azure.com/runs/{job.name}")

    def _download(self, name, download_path, output_name):
        if "job" in self.missing:
            raise ResourceNotFoundError("no such job")
        if "unfinished" in self.missing:
            from azure.ai.ml.exceptions import JobException
            raise JobException(message="This job is in state Running", no_personal_data_message="running")
        target = Path(download_path) / "named-outputs" / output_name
        target.mkdir(parents=True)
        shutil.copy2(self.bundle, target / J.BUNDLE)


@pytest.mark.parametrize("fake, message", [
    (FakeML(missing={"workspace"}), "Azure ML workspace 'ws-travel' not found in resource group 'rg-travel'; "
                                    "check register.azure or $AZUREML_WORKSPACE_NAME"),
    (FakeML(missing={"compute"}), "compute cluster 'gpu' not found in workspace 'ws-travel'; create it"),
    (FakeML(auth=True), "Azure credentials were rejected or missing (ClientAuthenticationError); run `az login`"),
])
def test_target_failures_are_one_line(fake, message):
    with pytest.raises(UserError) as e:
        J.check_target(fake, WS, "gpu")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_submit_sends_each_job_and_retries_transient_errors(repo, tmp_path, monkeypatch):
    from ondevice.ship import azure

    monkeypatch.setattr(azure.time, "sleep", lambda s: None)
    busy = HttpResponseError(message="busy")
    busy.status_code = 503
    cfg = J.settings(PARAMS, {"AZUREML_COMPUTE": "gpu"})
    sha = J.head(repo)
    env = J.environment(cfg, *J.build_context(repo, sha, "docker/Dockerfile", tmp_path / "env"))
    jobs = [J.job(cfg, o, J.snapshot(repo, sha, tmp_path / "code"), env, sha, {}, stamp="1") for o in
            (["finetune.r=8"], ["finetune.r=32"])]
    fake = FakeML(failures=[busy])
    created = J.submit(fake, jobs)
    assert [c.name for c in created] == [j.name for j in jobs] == [f"ondevice-{sha[:7]}-finetune-r-8-1",
                                                                  f"ondevice-{sha[:7]}-finetune-r-32-1"]
    assert fake.created[0].environment.build.dockerfile_path == "docker/Dockerfile"


def test_fetch_brings_the_jobs_experiment_home_for_dvc_exp_show(tmp_path):
    """The return path for real: `dvc exp run` in a clone (the job), its bundle, fetched back here."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "params.yaml").write_text("p:\n  r: 1\n")
    (home / "s.py").write_text("import json, yaml\nr = yaml.safe_load(open('params.yaml'))['p']['r']\n"
                               "json.dump({'score': r * 2}, open('m.json', 'w'))\n")
    (home / "dvc.yaml").write_text("stages:\n  s:\n    cmd: python s.py\n    deps: [s.py]\n    params: [p]\n"
                                   "    metrics: [{m.json: {cache: false}}]\n")
    sh("git init -q && dvc init -q && dvc repro -q && git add -A && git commit -qm base", home)
    job = J.snapshot(home, J.head(home), tmp_path / "job")  # what the job runs in
    sh("dvc exp run -q -n ondevice-abc-p-r-5 -S p.r=5", job)
    sh(J.BUNDLE_CMD.format(out=tmp_path / J.BUNDLE), job)
    fake = FakeML()
    fake.bundle = tmp_path / J.BUNDLE
    assert J.fetch(fake, "job-1", home, tmp_path / "download") == ["ondevice-abc-p-r-5"]
    table = sh("dvc exp show --md --no-pager", home)
    assert "ondevice-abc-p-r-5" in table and "10" in table
    for missing, message in (("job", "no job 'job-1' in this workspace"), ("unfinished", "job 'job-1' has not")):
        with pytest.raises(UserError, match=message):
            J.fetch(FakeML(missing={missing}), "job-1", home, tmp_path / missing)


def bad_input(case: str, tmp_path: Path) -> str:
    """docs/bad-inputs.md rows for `make azure-job`, `make sweep` and the card (tests/test_bad_inputs.py runs them)."""
    if case == "azure-job-no-compute":
        return run_script(make_repo(tmp_path / "r")).stderr.strip().removeprefix("error: ")  # a dry run lists it
    if case == "register-no-card":
        (tmp_path / "onnx").mkdir()
        (tmp_path / "onnx/genai_config.json").write_text("{}")
        out = subprocess.run([sys.executable, str(ROOT / "scripts/azure_register.py"), "--params",
                              str(ROOT / "params.yaml"), "--onnx", "onnx", "--adapters", "onnx", "--card",
                              str(tmp_path / "no.md"), "--dry-run"], cwd=tmp_path, capture_output=True, text=True)
        return out.stderr.strip().removeprefix("error: ")
    if case == "register-metric-renamed":
        (tmp_path / "metrics").mkdir()
        (tmp_path / "metrics/evaluate.json").write_text('{"quantization": {"method": "awq"}}')
        call = lambda: azure_register.tags(tmp_path / "metrics", yaml.safe_load((ROOT / "params.yaml").read_text()))  # noqa: E731
        with pytest.raises(UserError) as e:
            call()
        return str(e.value).replace(str(tmp_path), "<dir>")
    if case == "sweep-bad-variant":
        call = lambda: variants.parse("finetune.r")  # noqa: E731
    elif case.startswith("azure-job-remote-"):
        config = {"missing": "[core]\n", "secret": REMOTE + "    sas_token = x\n",
                  "local": "['remote \"azure\"']\n    url = /mnt/store\n"}[case.rsplit("-", 1)[1]]
        repo = make_repo(tmp_path / "r", config)
        call = lambda: J.remote_url(repo, J.head(repo), "azure")  # noqa: E731
    else:
        fake = {"azure-job-workspace-not-found": FakeML(missing={"workspace"}),
                "azure-job-compute-not-found": FakeML(missing={"compute"}),
                "azure-job-credentials-rejected": FakeML(auth=True)}[case]
        call = lambda: J.check_target(fake, WS, "gpu")  # noqa: E731
    with pytest.raises(UserError) as e:
        call()
    return str(e.value)


BAD_INPUTS = ("azure-job-no-compute", "azure-job-workspace-not-found", "azure-job-compute-not-found",
              "azure-job-credentials-rejected", "azure-job-remote-missing", "azure-job-remote-secret",
              "azure-job-remote-local", "register-no-card", "register-metric-renamed", "sweep-bad-variant")

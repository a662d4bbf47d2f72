"""The pipeline as Azure ML command jobs (`make azure-job`), one job per variant, with azure-ai-ml.

Each job runs a snapshot of the committed repository (a fresh clone of HEAD: no untracked files, no
local DVC config or cache, no git credentials) in an environment built from docker/Dockerfile:
`dvc exp run -n NAME -S ...`, then `dvc push -r REMOTE` sends the outputs to the DVC remote on
Azure Blob and the experiment's git commit comes back as a git bundle in the job's output
`experiments`. `--fetch JOB` downloads that bundle into refs/exps, where `dvc exp show` lists it
beside local runs; `dvc exp apply NAME && dvc pull -r REMOTE` brings its model home.

No secret is in the spec: the workspace comes from params/environment (ondevice.ship.azure.workspace),
credentials from DefaultAzureCredential, and the job reaches the blob remote as its compute's
managed identity.

`--dry-run` is how a user learns what to set up: it never stops at a missing setting (Gaps), prints
the specs with a marked placeholder where a value is missing, then the list of what a real
submission still needs; a real submission refuses at the first missing thing, in one line.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

from ondevice.atomic import UserError
from ondevice.ship.variants import slug

COMPUTE_ENV = "AZUREML_COMPUTE"
OUTPUT, BUNDLE = "experiments", "experiments.bundle"
DVC_AZURE = "dvc-azure==3.1.1"  # the job installs it if the image lacks it (add it to requirements.txt)
SECRET_KEYS = ("account_key", "sas_token", "connection_string", "client_secret", "password",
               "secret_access_key", "session_token", "token")
WORK = Path(".dvc/tmp/azure-job")  # snapshots: ignored by git (.dvc/.gitignore) and by DVC
BUNDLE_CMD = "git bundle create {out} --exclude='refs/exps/exec/*' --glob=refs/exps"  # not DVC's own run refs


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if out.returncode:
        raise UserError(f"git {' '.join(args)} failed in {repo}: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return out.stdout


def placeholder(what: str) -> str:
    """The one marker a dry run puts in a spec where a setting is missing."""
    return f"<{what}: not set>"


class Gaps:
    """What a real submission still lacks. Strict (a real run): each check's one-line error is raised
    at once, before any Azure call. Not strict (a dry run): the line is kept for the closing list and
    the run goes on with a placeholder, so one dry run shows everything there is to set up."""

    def __init__(self, strict: bool):
        self.strict, self.lines = strict, []

    def missing(self, error: UserError, instead: str = "") -> str:
        if self.strict:
            raise error
        self.lines.append(str(error))
        return instead

    def check(self, call, instead=None):
        """call(), or `instead` when it raises a UserError (recorded) in a dry run."""
        try:
            return call()
        except UserError as e:
            return self.missing(e, instead)

    def report(self) -> str:
        """The closing list, as YAML comments: the dry run's output still loads as YAML."""
        return "\n".join(["# missing before a real submission:", *(f"#   - {line}" for line in self.lines)])


def settings(params: dict, environ=os.environ, gaps: Gaps | None = None) -> dict:
    """params.yaml azure_job, with the compute cluster from $AZUREML_COMPUTE where params leave it empty."""
    cfg = dict(params["azure_job"])
    cfg["compute"] = cfg["compute"] or environ.get(COMPUTE_ENV, "")
    if not cfg["compute"]:
        cfg["compute"] = (gaps or Gaps(strict=True)).missing(
            UserError(f"no Azure ML compute cluster: set azure_job.compute in params.yaml or ${COMPUTE_ENV}"),
            placeholder(COMPUTE_ENV))
    if not all(isinstance(s, str) and s for s in cfg["stages"]):
        raise UserError(f"params.yaml: azure_job.stages={cfg['stages']!r} must list stage names, "
                        "e.g. [finetune@travel]")
    return cfg


def head(repo: Path) -> str:
    out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "-q", "HEAD"], capture_output=True,
                         text=True)
    if out.returncode:
        raise UserError(f"{repo} has no git commit; an Azure ML job runs a commit: `git commit` first")
    return out.stdout.strip()


def uncommitted(repo: Path) -> list[str]:
    return [line[3:] for line in git(repo, "status", "--porcelain", "--untracked-files=no").splitlines()]


def remote_url(repo: Path, sha: str, name: str) -> str:
    """The DVC remote the job pushes to, from the committed .dvc/config: present, reachable, no secrets."""
    from configobj import ConfigObj

    shown = subprocess.run(["git", "-C", str(repo), "show", f"{sha}:.dvc/config"], capture_output=True, text=True)
    section = ConfigObj(shown.stdout.splitlines()).get(f'remote "{name}"') if not shown.returncode else None
    if not section or not section.get("url"):
        raise UserError(f"DVC remote {name!r} is not in the committed .dvc/config; `dvc remote add {name} "
                        f"azure://<container>/<path>`, `dvc remote modify {name} account_name <account>`, "
                        "commit .dvc/config (or set azure_job.remote)")
    leaked = [k for k in section if k in SECRET_KEYS]
    if leaked:
        raise UserError(f"DVC remote {name!r} has {', '.join(leaked)} in the committed .dvc/config; move it to "
                        f"`dvc remote modify --local {name} ...`: the job uses its managed identity, never a key")
    if "://" not in section["url"]:
        raise UserError(f"DVC remote {name!r} is the local path {section['url']}, which the job cannot reach; "
                        "use azure://<container>/<path>")
    return section["url"]


def snapshot(repo: Path, sha: str, dest: Path) -> Path:
    """The job's code: a fresh clone of the commit (its .git too: `dvc exp run` needs one)."""
    if not (dest / ".git").exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "-q", "--no-checkout", str(repo), str(dest)], check=True, capture_output=True)
        git(dest, "remote", "remove", "origin")
        git(dest, "checkout", "-q", "--detach", sha)
    return dest


def build_sources(dockerfile: str) -> list[str]:
    """The context paths a Dockerfile reads: COPY/ADD sources and RUN --mount=type=bind sources."""
    paths = []
    for line in re.sub(r"\\\n", " ", dockerfile).splitlines():
        words = line.split()
        if words and words[0].upper() in ("COPY", "ADD") and not any(w.startswith("--from") for w in words):
            paths += [w for w in words[1:-1] if not w.startswith("--") and "://" not in w]
        paths += re.findall(r"--mount=type=bind,(?:[^ ]*,)?source=([^, ]+)", line)
    return sorted(set(paths))


def build_context(repo: Path, sha: str, dockerfile: str, dest: Path) -> tuple[Path, str]:
    """The environment's build context: only what docker/Dockerfile reads, from the commit, so the
    image is rebuilt when those files change and not at every commit. Returns (folder, content hash)."""
    import shutil

    text = git(repo, "show", f"{sha}:{dockerfile}")
    shutil.rmtree(dest, ignore_errors=True)
    for path in [dockerfile, *build_sources(text)]:
        if git(repo, "ls-tree", "-r", "--name-only", sha, "--", path).strip():
            archive = subprocess.run(["git", "-C", str(repo), "archive", sha, "--", path], capture_output=True,
                                     check=True).stdout
            dest.mkdir(parents=True, exist_ok=True)
            subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        else:  # e.g. docker/wheels, a bind mount the CUDA build leaves empty
            (dest / path).mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    for p in sorted(q for q in dest.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(dest)).encode() + b"\0" + p.read_bytes())
    return dest, h.hexdigest()[:16]


def command_line(name: str, overrides: list[str], stages: list[str], remote: str) -> str:
    """What the job runs, in its snapshot of the repository."""
    sets = "".join(f" -S {shlex.quote(o)}" for o in overrides)
    targets = "".join(f" {shlex.quote(s)}" for s in stages)
    return " && ".join([
        'export PYTHONPATH="$PWD"',
        # a user-assigned identity on the cluster: DefaultAzureCredential finds it through AZURE_CLIENT_ID
        '{ [ -z "${DEFAULT_IDENTITY_CLIENT_ID:-}" ] || '
        'export AZURE_CLIENT_ID="${AZURE_CLIENT_ID:-$DEFAULT_IDENTITY_CLIENT_ID}"; }',
        f"{{ python -c 'import dvc_azure' 2>/dev/null || pip install --no-cache-dir {DVC_AZURE}; }}",
        f"{{ dvc pull -r {shlex.quote(remote)} --allow-missing || echo 'nothing to reuse from the remote yet'; }}",
        f"dvc exp run -n {name}{sets}{targets}",
        f"dvc push -r {shlex.quote(remote)}",
        BUNDLE_CMD.format(out=f"${{{{outputs.{OUTPUT}}}}}/{BUNDLE}"),
    ])


def environment(cfg: dict, context: Path, version: str, dockerfile: str = "docker/Dockerfile"):
    from azure.ai.ml.entities import BuildContext, Environment

    return Environment(name=cfg["environment"], version=version,
                       description=f"ondevice pipeline image, built from {dockerfile} (CUDA 13)",
                       build=BuildContext(path=str(context), dockerfile_path=dockerfile))


def job(cfg: dict, overrides: list[str], code: Path, env, sha: str, identity: dict, stamp: str | None = None):
    """One Azure ML command job for one variant (as submitted: a CommandJob)."""
    from azure.ai.ml import Output, command
    from azure.ai.ml.entities import ManagedIdentityConfiguration

    stamp = stamp or time.strftime("%Y%m%d%H%M%S")
    name = f"ondevice-{sha[:7]}-{slug(overrides)}-{stamp}"
    shown = " ".join(overrides) or "params.yaml as committed"
    return command(
        name=name, display_name=f"ondevice {sha[:7]}: {shown}"[:200], experiment_name=cfg["experiment_name"],
        description=f"dvc exp run {shown} on commit {sha}; outputs pushed to DVC remote {cfg['remote']}",
        command=command_line(name, overrides, cfg["stages"], cfg["remote"]), code=str(code), environment=env,
        compute=cfg["compute"], identity=ManagedIdentityConfiguration(),
        environment_variables={**identity, "DVC_NO_ANALYTICS": "1", "TOKENIZERS_PARALLELISM": "false"},
        outputs={OUTPUT: Output(type="uri_folder")},
        tags={"pipeline": "ondevice", "git_commit": sha, "variant": shown, "dvc_experiment": name,
              "dvc_remote": cfg["remote"]},
    )._to_job()


def spec(entity) -> dict:
    """An entity as its YAML-shaped dict (what `az ml job create -f` would read)."""
    return json.loads(json.dumps(entity._to_dict()))


def git_identity(repo: Path) -> dict:
    """Who the job's experiment commits are by: this user's git identity, else a neutral one."""
    def get(key, default):
        out = subprocess.run(["git", "-C", str(repo), "config", key], capture_output=True, text=True)
        return out.stdout.strip() or default

    name, email = get("user.name", "ondevice azure-job"), get("user.email", "azure-job@ondevice.invalid")
    return {f"GIT_{who}_{k}": v for who in ("AUTHOR", "COMMITTER") for k, v in (("NAME", name), ("EMAIL", email))}


def local_credentials(environ=os.environ) -> None:
    """A dry run's look for a DefaultAzureCredential source without asking Azure: a service principal or
    workload identity in the environment, a managed-identity endpoint, or an `az login` profile. Only a
    dry run uses it: an Azure VM's metadata identity cannot be seen from here, and a real run asks Azure."""
    if any(environ.get(k) for k in ("IDENTITY_ENDPOINT", "MSI_ENDPOINT")) or (
            environ.get("AZURE_CLIENT_ID") and environ.get("AZURE_TENANT_ID") and any(
                environ.get(k) for k in ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
                                         "AZURE_FEDERATED_TOKEN_FILE"))):
        return
    config = Path(environ.get("AZURE_CONFIG_DIR") or Path(environ.get("HOME") or "~").expanduser() / ".azure")
    try:  # `az login` lists its subscriptions there; `az logout` empties the list
        if json.loads((config / "azureProfile.json").read_text(encoding="utf-8-sig")).get("subscriptions"):
            return
    except (OSError, ValueError, AttributeError):
        pass
    raise UserError("no Azure credentials found here (looked for locally, Azure not asked); run `az login` or set "
                    "AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET")


def check_target(ml_client, ws: dict, compute: str) -> None:
    """The workspace and the compute cluster exist, and the credentials are accepted: else one line."""
    from azure.core.exceptions import ResourceNotFoundError

    from ondevice.ship.azure import credentials_checked

    with credentials_checked():
        try:
            ml_client.workspaces.get(ws["workspace"])
        except ResourceNotFoundError:
            raise UserError(f"Azure ML workspace {ws['workspace']!r} not found in resource group "
                            f"{ws['resource_group']!r}; check register.azure or $AZUREML_WORKSPACE_NAME") from None
        try:
            ml_client.compute.get(compute)
        except ResourceNotFoundError:
            raise UserError(f"compute cluster {compute!r} not found in workspace {ws['workspace']!r}; create it "
                            f"(`az ml compute create -n {compute} --type amlcompute --size <vm size> "
                            f"--identity-type system_assigned`) or set azure_job.compute / ${COMPUTE_ENV}") from None


def submit(ml_client, jobs: list) -> list:
    from ondevice.ship.azure import credentials_checked, with_retries

    with credentials_checked():
        return [with_retries(lambda j=j: ml_client.jobs.create_or_update(j)) for j in jobs]


def fetch(ml_client, name: str, repo: Path, dest: Path) -> list[str]:
    """Bring a finished job's experiment home: its bundle's refs/exps into this repository's."""
    from azure.ai.ml.exceptions import JobException
    from azure.core.exceptions import ResourceNotFoundError

    from ondevice.ship.azure import credentials_checked

    with credentials_checked():
        try:
            ml_client.jobs.download(name, download_path=str(dest), output_name=OUTPUT)
        except ResourceNotFoundError:
            raise UserError(f"no job {name!r} in this workspace; list them with `az ml job list`") from None
        except JobException:
            raise UserError(f"job {name!r} has not finished; wait for it (`az ml job stream -n {name}`)") from None
    found = sorted(Path(dest).rglob(BUNDLE))
    if not found:
        raise UserError(f"job {name!r} left no {BUNDLE}: it stopped before its experiment was pushed; "
                        f"see `az ml job stream -n {name}`")
    git(repo, "fetch", "-q", str(found[0]), "+refs/exps/*:refs/exps/*")
    heads = git(repo, "bundle", "list-heads", str(found[0])).split()[1::2]
    return [h.rsplit("/", 1)[-1] for h in heads if h.startswith("refs/exps/") and "/exec/" not in h]

"""The pipeline as Azure ML command jobs: one job per `-S` variant (several key=value in one `-S`,
space-separated, go into the same job); `--dry-run` prints the environment and job specs as they
would be submitted, then what a real submission still needs (nothing configured is fine: placeholders
mark the gaps), and touches no network; `--fetch JOB` brings a finished job's experiment home."""
from pathlib import Path

import click
import yaml

from ondevice import params as P
from ondevice.cli import params_option, stage
from ondevice.ship import azure, variants
from ondevice.ship import azure_job as J


@click.command()
@params_option
@click.option("-S", "--set-param", "sets", multiple=True, metavar="KEY=VALUE[ KEY=VALUE...]",
              help="one job per -S; several space-separated overrides in one -S go into the same job")
@click.option("--stage", "stages", multiple=True, help="run these stages (and what they need), not azure_job.stages")
@click.option("--dry-run", is_flag=True,
              help="print the specs that would be submitted and what a submission still needs; no network")
@click.option("--fetch", "fetch_job", metavar="JOB", help="download a finished job's experiment into refs/exps")
@click.option("--repo", default=".", show_default=True, type=click.Path(file_okay=False))
@stage
def main(params_path, sets, stages, dry_run, fetch_job, repo):
    params, repo = P.load(params_path), Path(repo)
    if fetch_job:
        ml = azure.client(azure.workspace(params))
        names = J.fetch(ml, fetch_job, repo, repo / J.WORK / "download" / fetch_job)
        remote = params["azure_job"]["remote"]
        click.echo(f"fetched {', '.join(names)}: `dvc exp show` lists it beside local runs; its model: "
                   f"`dvc exp apply {names[0]} && dvc pull -r {remote}`")
        return
    gaps = J.Gaps(strict=not dry_run)  # a real run stops at the first missing setting, a dry run lists them all
    cfg = J.settings(params, gaps=gaps)
    if stages:
        cfg["stages"] = list(stages)
    runs = variants.variants(sets, params)
    ws = gaps.check(lambda: azure.workspace(params))  # not in the specs: the dry run only lists it if missing
    sha = J.head(repo)
    url = gaps.check(lambda: J.remote_url(repo, sha, cfg["remote"]), "")  # the specs name the remote, not its url
    dirty = J.uncommitted(repo)
    if dirty:
        click.echo(f"warning: the jobs run commit {sha[:7]}; uncommitted changes stay here: {', '.join(dirty)}",
                   err=True)
    if url.startswith("azure://") and "dvc-azure" not in J.git(repo, "show", f"{sha}:requirements.txt"):
        click.echo(f"warning: requirements.txt has no dvc-azure; each job installs {J.DVC_AZURE} before it runs "
                   "(add it there to build it into the image)", err=True)
    work = repo / J.WORK / sha[:12]
    code = J.snapshot(repo, sha, work / "code")
    context, version = J.build_context(repo, sha, "docker/Dockerfile", work / "environment")
    env = J.environment(cfg, context, version)
    jobs = [J.job(cfg, overrides, code, env, sha, J.git_identity(repo)) for overrides in runs]
    if dry_run:
        gaps.check(J.local_credentials)  # a real run asks Azure instead (check_target), so only here
        click.echo(yaml.safe_dump_all([J.spec(env), *(J.spec(j) for j in jobs)], sort_keys=False, width=120))
        if gaps.lines:
            click.echo(gaps.report())
        return
    ml = azure.client(ws)
    J.check_target(ml, ws, cfg["compute"])
    for created in J.submit(ml, jobs):
        click.echo(f"submitted {created.name}: {getattr(created, 'studio_url', '') or ''}")
    click.echo('when a job is done: `make azure-job ARGS="--fetch JOB"`, then `dvc exp show`')


if __name__ == "__main__":
    main()

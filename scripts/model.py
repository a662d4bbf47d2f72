"""Stage `model`: materialise the base model as a Hugging Face folder."""
import click

from ondevice import params as P
from ondevice.atomic import atomic_dir, require_free_space, write_json
from ondevice.cli import params_option, stage
from ondevice.sources.model_source import check_supported, load_config, run


@click.command()
@params_option
@click.option("--out", required=True)
@click.option("--metrics", required=True)
@stage
def main(params_path, out, metrics):
    params = P.load(params_path)
    cfg = P.section(params, "model")
    config = load_config(cfg.source, params)  # before the heavy load (an Azure ML asset is downloaded here, once)
    check_supported(config, cfg.source)
    P.check_model_fit(params, config)
    require_free_space(out, 2 * 2**30, "the float base model")
    with atomic_dir(out) as tmp:
        facts = run(config, params, tmp, cfg)
    write_json(metrics, facts)
    click.echo(f"base model -> {out}: {facts['architecture']}, {facts['parameters'] / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()

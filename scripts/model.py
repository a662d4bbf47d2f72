"""Stage `model`: materialise the base model as a Hugging Face folder."""
import click

from ondevice import params as P
from ondevice.atomic import atomic_dir, require_free_space, write_json
from ondevice.cli import params_option, stage
from ondevice.model_source import load_config, materialize


@click.command()
@params_option
@click.option("--out", default="models/base", show_default=True)
@click.option("--metrics", default="metrics/model.json", show_default=True)
@stage
def main(params_path, out, metrics):
    params = P.load(params_path)
    P.check_model_fit(params, load_config(params["model"]["source"]))  # before the heavy load
    require_free_space(out, 2 * 2**30, "the float base model")
    with atomic_dir(out) as tmp:
        facts = materialize(params["model"]["source"], tmp)
    write_json(metrics, {"source": params["model"]["source"], **facts})
    click.echo(f"base model -> {out}: {facts['architecture']}, {facts['parameters'] / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()

"""Chat with the shipped model through onnxruntime-genai: prompt in, streamed answer out.

This is the reference client of the output contract: og.Model(dir), og.Adapters(model).load(...),
GeneratorParams, Generator, set_active_adapter, append_tokens, generate_next_token until is_done,
streamed through tokenizer.create_stream().
"""
import json
import sys
from pathlib import Path

import click


def chat_prompt(tokenizer, model_dir: Path, prompt: str) -> str:
    """Render the user turn with the model's own chat template (as in training)."""
    template_file = model_dir / "chat_template.jinja"
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    template = config.get("chat_template") or (template_file.read_text() if template_file.exists() else None)
    messages = json.dumps([{"role": "user", "content": prompt}])
    return tokenizer.apply_chat_template(messages, template_str=template, add_generation_prompt=True)


@click.command()
@click.argument("prompt", required=False)
@click.option("--model", "model_dir", default="models/onnx", show_default=True, type=click.Path(file_okay=False))
@click.option("--adapter", default="travel", show_default=True, help="adapter name under MODEL/adapters, or none")
@click.option("--max-new-tokens", default=200, show_default=True)
def main(prompt, model_dir, adapter, max_new_tokens):
    import onnxruntime_genai as og

    model_dir = Path(model_dir)
    if not (model_dir / "genai_config.json").exists():
        raise click.ClickException(f"{model_dir} has no genai_config.json; run `make repro` first or pass --model")
    prompt = prompt or sys.stdin.read().strip()
    if not prompt:
        raise click.ClickException("no prompt: pass one as an argument or on stdin")
    model = og.Model(str(model_dir))
    tokenizer = og.Tokenizer(model)
    adapters = None
    if adapter.lower() != "none":
        path = model_dir / "adapters" / f"{adapter}.onnx_adapter"
        if not path.exists():
            known = sorted(p.stem for p in (model_dir / "adapters").glob("*.onnx_adapter"))
            raise click.ClickException(f"no adapter {adapter!r} in {model_dir}/adapters; known: {known + ['none']}")
        adapters = og.Adapters(model)
        adapters.load(str(path), adapter)
    ids = tokenizer.encode(chat_prompt(tokenizer, model_dir, prompt))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    if adapters is not None:
        generator.set_active_adapter(adapters, adapter)
    generator.append_tokens(ids)
    stream = tokenizer.create_stream()
    while not generator.is_done():
        generator.generate_next_token()
        click.echo(stream.decode(generator.get_next_tokens()[0]), nl=False)
    click.echo()


if __name__ == "__main__":
    main()

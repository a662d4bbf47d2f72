"""Chat with the shipped model through onnxruntime-genai: prompt in, streamed answer out.

The client of the output contract (ondevice/runtime/client.py) as a command.
"""
import json
import sys
from pathlib import Path

import click

from ondevice.cli import stage


def adapter_template(params_path: Path, adapter: str | None) -> str:
    """The template the adapter was trained with (params.yaml), so it is served in the same format."""
    if not params_path.exists():
        return "chat"
    from ondevice import params as P

    params = P.load(params_path)
    return P.adapter_config(params, adapter)["template"] if adapter in params["adapters"] \
        else params["finetune"]["template"]


def prompt_text(tokenizer, model_dir: Path, template: str, messages: list[dict]) -> str:
    """The conversation as training rendered it (ondevice.text.segments): the chat template, or the string one."""
    if template != "chat":
        from ondevice.text import prompt_text as rendered

        return rendered(None, template, messages)
    return chat_prompt(tokenizer, model_dir, messages)


def chat_prompt(tokenizer, model_dir: Path, messages: list[dict]) -> str:
    """Render the turns with the model's own chat template (as in training), through onnxruntime-genai's
    tokenizer: the client needs neither transformers nor torch."""
    template_file = model_dir / "chat_template.jinja"
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    template = config.get("chat_template") or (template_file.read_text() if template_file.exists() else None)
    return tokenizer.apply_chat_template(json.dumps(messages), template_str=template, add_generation_prompt=True)


@click.command()
@click.argument("prompt", required=False)
@click.option("--model", "model_dir", default="models/onnx", show_default=True, type=click.Path(file_okay=False))
@click.option("--adapters", "adapters_dir", default="models/adapters", show_default=True,
              type=click.Path(file_okay=False), help="folder of NAME.onnx_adapter files")
@click.option("--adapter", default="none", show_default=True, help="which adapter serves the answer, or none")
@click.option("--max-new-tokens", default=200, show_default=True)
@click.option("--system", default=None, help="a system prompt before the question (as in chat-format training data)")
@click.option("--template", default=None, help="prompt template; default: the adapter's in --params (else chat)")
@click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path(dir_okay=False))
@stage
def main(prompt, model_dir, adapters_dir, adapter, max_new_tokens, system, template, params_path):
    from ondevice.runtime.client import kv_capacity_floor, open_model, stream_answer

    model_dir = Path(model_dir)
    if not (model_dir / "genai_config.json").exists():
        raise click.ClickException(f"{model_dir} has no genai_config.json; run `make repro` first or pass --model")
    prompt = prompt or sys.stdin.read().strip()
    if not prompt:
        raise click.ClickException("no prompt: pass one as an argument or on stdin")
    name = None if adapter.lower() == "none" else adapter
    if name:
        path = Path(adapters_dir) / f"{name}.onnx_adapter"
        if not path.exists():
            known = sorted(p.stem for p in Path(adapters_dir).glob("*.onnx_adapter"))
            raise click.ClickException(f"no adapter {name!r} in {adapters_dir}; known: {', '.join(known + ['none'])}")
    model, tokenizer, adapters = open_model(model_dir, {name: path} if name else None)
    template = template or adapter_template(Path(params_path), name)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    ids = tokenizer.encode(prompt_text(tokenizer, model_dir, template, messages))
    for piece in stream_answer(model, tokenizer, adapters, name, ids, max_new_tokens, kv_capacity_floor(model_dir)):
        click.echo(piece, nl=False)
    click.echo()


if __name__ == "__main__":
    main()

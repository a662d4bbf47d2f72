"""Turn a (prompt, response) pair into token ids and a loss mask, the same way for every stage.

Training, calibration, evaluation and the chat client all go through `render`, so the text the
adapter is trained on is the text it is evaluated and served on.
"""
from __future__ import annotations

IGNORE = -100


def render(tokenizer, template: str, prompt: str, response: str | None = None) -> tuple[str, str]:
    """Return (prompt_text, completion_text); prompt_text ends where the model starts to answer."""
    if template == "chat":
        from ondevice.model_source import eos_token

        if not getattr(tokenizer, "chat_template", None):  # base models (Gemma 3 270M) ship none
            from ondevice.atomic import UserError

            raise UserError('finetune.template=chat but the model has no chat template (a base model); give a '
                            'string template, e.g. finetune.template: "{prompt}\\n{response}"')

        msgs = [{"role": "user", "content": prompt}]
        prompt_text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        completion = "" if response is None else response + eos_token(tokenizer) + "\n"
        return prompt_text, completion
    head, _, tail = template.partition("{response}")
    prompt_text = head.replace("{prompt}", prompt)
    if response is None:
        return prompt_text, ""
    return prompt_text, response + tail.replace("{prompt}", prompt) + (tokenizer.eos_token or "")


def encode_example(tokenizer, template: str, row: dict, seq_len: int) -> dict:
    """input_ids and labels (prompt positions masked), truncated to seq_len."""
    prompt_text, completion = render(tokenizer, template, row["prompt"], row["response"])
    p_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = (p_ids + c_ids)[:seq_len]
    labels = ([IGNORE] * len(p_ids) + c_ids)[:seq_len]
    return {"input_ids": ids, "labels": labels, "truncated": len(p_ids) + len(c_ids) > seq_len}


def collate(examples: list[dict], pad_id: int):
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):  # only the token fields travel into the batch
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}

"""Turn a row (a conversation) into text, token ids and a loss mask, the same way for every stage.

Training, calibration, evaluation, the kernel guard and the chat client all go through `segments`,
so the text the adapter is trained on is the text it is evaluated and served on. Loss is on the
assistant's turns only: the system prompt and the user's turns are given.
"""
from __future__ import annotations

from ondevice.data import conversation

IGNORE = -100


def segments(tokenizer, template: str, messages: list[dict]) -> list[tuple[str, bool]]:
    """The conversation as consecutive (text, trained) pieces: each assistant turn (with its end of
    turn) is trained, everything between is not. If the last turn is the user's, the text ends where
    the model starts to answer (a generation prompt)."""
    if template == "chat":
        return _chat_segments(tokenizer, messages)
    return _string_segments(tokenizer, template, messages)


def _chat_segments(tokenizer, messages: list[dict]) -> list[tuple[str, bool]]:
    from ondevice.tokenizer import eos_token

    if not getattr(tokenizer, "chat_template", None):  # base models (Gemma 3 270M) ship none
        from ondevice.atomic import UserError

        raise UserError('finetune.template=chat but the model has no chat template (a base model); give a '
                        'string template, e.g. finetune.template: "{prompt}\\n{response}"')

    def prompt_before(i):  # the conversation up to turn i, ending with the assistant's header
        return tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True, tokenize=False)

    out, done = [], ""
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for i in answers:
        head = prompt_before(i)
        if not head.startswith(done):  # the template rewrites earlier turns (some drop past reasoning):
            last = answers[-1]          # then only the final answer is trained, on the rendered history
            return [(prompt_before(last), False), (messages[last]["content"] + eos_token(tokenizer) + "\n", True)]
        answer = messages[i]["content"] + eos_token(tokenizer) + "\n"
        out += [(head[len(done):], False), (answer, True)]
        done = head + answer
    if messages[-1]["role"] != "assistant":
        out.append((prompt_before(len(messages))[len(done):], False))
    return out


def _string_segments(tokenizer, template: str, messages: list[dict]) -> list[tuple[str, bool]]:
    """A string template frames one exchange: {prompt} is the user's turn, {response} the answer; a
    system turn goes before the first prompt, a blank line after it; eos only after the last answer."""
    head, _, tail = template.partition("{response}")
    system = messages[0]["content"] + "\n\n" if messages[0]["role"] == "system" else ""
    turns = [m for m in messages if m["role"] != "system"]
    out = []
    for k in range(0, len(turns), 2):
        prompt = turns[k]["content"]
        out.append(((system if k == 0 else "") + head.replace("{prompt}", prompt), False))
        if k + 1 < len(turns):
            end = (tokenizer.eos_token or "") if k + 2 >= len(turns) else ""
            out.append((turns[k + 1]["content"] + tail.replace("{prompt}", prompt) + end, True))
    return out


def prompt_text(tokenizer, template: str, messages: list[dict]) -> str:
    """What the model is given to answer the last (user) turn of `messages`."""
    return "".join(text for text, _ in segments(tokenizer, template, messages))


def row_text(tokenizer, template: str, row: dict) -> str:
    """A whole row as the model sees it (calibration packs these)."""
    return "".join(text for text, _ in segments(tokenizer, template, conversation(row)))


def encode_example(tokenizer, template: str, row: dict, seq_len: int) -> dict:
    """input_ids and labels (all but the assistant's tokens masked), truncated to seq_len."""
    ids, labels = [], []
    for text, trained in segments(tokenizer, template, conversation(row)):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [IGNORE] * len(piece)
    return {"input_ids": ids[:seq_len], "labels": labels[:seq_len], "truncated": len(ids) > seq_len}


def keep_answerable(tokenizer, template: str, rows: list[dict], seq_len: int, source) -> tuple[list[dict], int]:
    """The rows that keep at least one assistant token within seq_len, and how many were dropped.
    A row truncated before its answer has no loss at all: a batch of such rows trains on NaN."""
    from ondevice.atomic import UserError
    from ondevice.data import MIN_ROWS

    kept = [r for r in rows
            if any(label != IGNORE for label in encode_example(tokenizer, template, r, seq_len)["labels"])]
    dropped = len(rows) - len(kept)
    if len(kept) < MIN_ROWS:
        raise UserError(f"{source}: {dropped} of {len(rows)} rows leave no response token within "
                        f"finetune.seq_len={seq_len} tokens; {len(kept)} remain, need at least {MIN_ROWS}; "
                        "raise finetune.seq_len or shorten the prompts")
    return kept, dropped


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

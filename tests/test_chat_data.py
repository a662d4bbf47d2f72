"""#31: data as users have it (chat messages, CSV, Parquet, a BOM) rendered one way everywhere, rows
cut before their answer dropped, and no NaN ever written or shipped."""
import json
import subprocess
import sys

import pytest

from conftest import LORA, ROOT, stage_args, write_params
from ondevice.atomic import UserError, write_json
from ondevice.data import conversation, read_rows
from ondevice.text import IGNORE, encode_example, keep_answerable, prompt_text, segments

SYSTEM = "You are a gardening assistant. Answer in one sentence."
CHAT = {"messages": [{"role": "system", "content": SYSTEM},
                     {"role": "user", "content": "When do I sow tomatoes?"},
                     {"role": "assistant", "content": "Indoors, six to eight weeks before the last frost."},
                     {"role": "user", "content": "And when do they go outside?"},
                     {"role": "assistant", "content": "Once nights stay above 10 degrees."}]}
PAIRS = [{"prompt": f"Question number {i}?", "response": f"Answer number {i}."} for i in range(12)]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_messages_rows_read_beside_prompt_response_rows(tmp_path):
    rows, warnings = read_rows(write_rows(tmp_path / "d.jsonl", PAIRS[:11] + [CHAT]))
    assert rows[-1] == CHAT and rows[0] == PAIRS[0] and not warnings
    assert conversation(rows[0]) == [{"role": "user", "content": "Question number 0?"},
                                     {"role": "assistant", "content": "Answer number 0."}]


@pytest.mark.parametrize("messages,message", [
    ([], "'messages' is empty"),
    ("hi", "'messages' is a str"),
    ([{"role": "tool", "content": "x"}], "messages[0] has role 'tool'"),
    ([{"role": "user", "content": " "}, {"role": "assistant", "content": "b"}], "messages[0] (user) is empty"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "turns are user, user; after an optional"),
    ([{"role": "user", "content": "a"}], "turns are user;"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}],
     "turns are user, system, assistant"),
])
def test_bad_messages_fail_in_one_line_with_where(tmp_path, messages, message):
    path = write_rows(tmp_path / "d.jsonl", PAIRS[:10] + [{"messages": messages}])
    with pytest.raises(UserError) as e:
        read_rows(path)
    assert str(e.value).startswith(f"{path}:11: ") and message in str(e.value)


def test_byte_order_mark_is_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + write_rows(tmp_path / "plain.jsonl", PAIRS).read_bytes())
    assert read_rows(path)[0] == PAIRS


def test_csv_and_parquet_read_through_pandas_and_pyarrow(tmp_path):
    import pandas as pd

    tricky = PAIRS[:10] + [{"prompt": 'Comma, "quotes"\nand a newline?', "response": "All kept."}]
    csv = tmp_path / "d.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + pd.DataFrame(tricky).to_csv(index=False).encode())  # Excel's UTF-8 CSV
    assert read_rows(csv)[0] == tricky
    chats = pd.DataFrame({"messages": [conversation(r) for r in PAIRS[:10]] + [CHAT["messages"]]})
    chats.to_parquet(tmp_path / "d.parquet")
    assert read_rows(tmp_path / "d.parquet")[0][-1] == CHAT
    chats.assign(messages=chats.messages.map(json.dumps)).to_csv(tmp_path / "m.csv", index=False)  # JSON in a cell
    assert read_rows(tmp_path / "m.csv")[0][-1] == CHAT


@pytest.mark.parametrize("name,content,message", [
    ("d.csv", "question,answer\na,b\n", "no prompt and response columns (nor messages); its columns are question, "
                                        "answer"),
    ("d.csv", "prompt,response\n" + "a,b\n" * 10 + ",c\n", ": row 11: 'prompt' is empty"),
    ("d.parquet", "not parquet", "not a readable Parquet file"),
])
def test_bad_tables_fail_in_one_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError) as e:
        read_rows(tmp_path / name)
    assert message in str(e.value)


def test_multi_turn_trains_on_every_answer_and_nothing_else(tokenizer):
    """Loss on the assistant turns only: the system prompt and the user turns are given."""
    ex = encode_example(tokenizer, "chat", CHAT, 256)
    trained = tokenizer.decode([i for i, label in zip(ex["input_ids"], ex["labels"], strict=True) if label != IGNORE])
    given = tokenizer.decode([i for i, label in zip(ex["input_ids"], ex["labels"], strict=True) if label == IGNORE])
    answers = [m["content"] for m in CHAT["messages"] if m["role"] == "assistant"]
    assert trained == "<|im_end|>\n".join(answers) + "<|im_end|>\n"
    assert SYSTEM in given and "sow tomatoes" in given and "go outside" in given
    assert not any(a in given for a in answers)
    # the pieces are the model's own chat template, byte for byte
    assert "".join(t for t, _ in segments(tokenizer, "chat", CHAT["messages"])) == \
        tokenizer.apply_chat_template(CHAT["messages"], tokenize=False)


def test_a_pair_and_its_messages_form_encode_identically(tokenizer):
    pair = PAIRS[3]
    for template in ("chat", "Q: {prompt}\nA: {response}"):
        assert encode_example(tokenizer, template, pair, 96) == \
            encode_example(tokenizer, template, {"messages": conversation(pair)}, 96)


def test_string_template_frames_each_exchange_and_ends_with_eos(tokenizer):
    text = "".join(t for t, _ in segments(tokenizer, "Q: {prompt}\nA: {response}\n", CHAT["messages"]))
    assert text == (f"{SYSTEM}\n\nQ: When do I sow tomatoes?\nA: Indoors, six to eight weeks before the last frost.\n"
                    f"Q: And when do they go outside?\nA: Once nights stay above 10 degrees.\n{tokenizer.eos_token}")
    assert prompt_text(None, "Q: {prompt}\nA: {response}", CHAT["messages"][:2]) == \
        f"{SYSTEM}\n\nQ: When do I sow tomatoes?\nA: "


def test_rows_cut_before_their_answer_are_dropped_and_too_few_refused(tokenizer):
    long = [{"prompt": "word " * 400, "response": "Short."}] * 3
    kept, dropped = keep_answerable(tokenizer, "chat", PAIRS + long, 256, "d.jsonl")
    assert kept == PAIRS and dropped == 3
    assert keep_answerable(tokenizer, "chat", PAIRS[:10] + long, 256, "d.jsonl")[1] == 3  # 10 remain: enough
    with pytest.raises(UserError) as e:
        keep_answerable(tokenizer, "chat", PAIRS[:9] + long, 256, "d.jsonl")
    assert str(e.value) == ("d.jsonl: 3 of 12 rows leave no response token within finetune.seq_len=256 tokens; "
                            "9 remain, need at least 10; raise finetune.seq_len or shorten the prompts")


def test_data_stage_warns_once_drops_and_counts(tmp_path, tokenizer_dir):
    data = write_rows(tmp_path / "d.jsonl", PAIRS + [{"prompt": f"{i} " + "word " * 400, "response": "Short."}
                                                     for i in range(2)])
    params = write_params(tmp_path / "params.yaml", {"adapters": {"travel": {"data": str(data)}}})
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "data.py"), "--params", str(params),
                          *stage_args("data", "travel"), "--base", str(tokenizer_dir)],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {data}: 2 of 14 rows leave no response token within finetune.seq_len=256 tokens "
                        "and were dropped; raise finetune.seq_len or shorten their prompts"]
    metrics = json.loads((tmp_path / "metrics" / "data" / "travel.json").read_text())
    assert metrics["rows_dropped_no_response_token"] == 2 and metrics["rows_train"] + metrics["rows_eval"] == 12


def test_a_nan_loss_stops_finetune_and_keeps_the_previous_log(quantized_dir, tokenizer, rows, tmp_path, monkeypatch):
    import torch

    from ondevice import finetune
    from ondevice.live import live

    log_dir = tmp_path / "live"
    with live(log_dir) as session:  # a previous complete run's log
        session.log_metric("loss", 1.0)
        session.next_step()
    before = sorted(p.relative_to(log_dir) for p in log_dir.rglob("*"))
    monkeypatch.setattr(finetune, "response_loss", lambda model, batch: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(UserError, match=r"the LoRA loss is nan at step 0; no adapter was written"):
        with live(log_dir) as session:
            finetune.train(quantized_dir, tokenizer, rows, LORA, lambda step: session.log_metric("loss", step["loss"]))
    assert sorted(p.relative_to(log_dir) for p in log_dir.rglob("*")) == before
    assert not list(tmp_path.glob(".live.tmp-*"))


def test_nan_is_never_written_as_a_number(tmp_path):
    from ondevice.measure.onnx_scoring import mean_loss

    assert mean_loss(0.0, 0)["loss"] != mean_loss(0.0, 0)["loss"]  # no token scored: NaN, not a loss of 0
    with pytest.raises(UserError, match=r"m.json: on_travel.adapter_travel.loss is not a finite number; nothing was"):
        write_json(tmp_path / "m.json", {"on_travel": {"adapter_travel": mean_loss(float("nan"), 10)}})
    with pytest.raises(UserError, match=r"runs.1 is not a finite number"):
        write_json(tmp_path / "m.json", {"runs": [1.0, float("inf")]})
    assert not (tmp_path / "m.json").exists()


def test_chat_client_renders_a_system_prompt_as_training_does(onnx_dir, tokenizer):
    import importlib.util

    import onnxruntime_genai as og

    spec = importlib.util.spec_from_file_location("chat", ROOT / "scripts" / "chat.py")
    chat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chat)
    history = CHAT["messages"][:2]
    served = chat.prompt_text(og.Tokenizer(og.Model(str(onnx_dir))), onnx_dir, "chat", history)
    assert served == prompt_text(tokenizer, "chat", history) and SYSTEM in served

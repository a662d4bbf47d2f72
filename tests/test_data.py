import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT
from ondevice.atomic import UserError
from ondevice.data import read_rows, split, stats

DATASET = ROOT / "data" / "travel_qa.jsonl"


def test_shipped_dataset_is_large_varied_and_short():
    rows, warnings = read_rows(DATASET)
    assert len(rows) >= 300 and not warnings
    text = " ".join(r["prompt"] + " " + r["response"] for r in rows).lower()
    for topic in ("visa", "train", "pack", "food", "budget", "safe", "tip", "museum"):
        assert topic in text
    for r in rows:  # answers of 1-3 sentences
        assert 1 <= r["response"].count(". ") + 1 <= 3, r


def test_split_is_deterministic_disjoint_and_complete():
    rows, _ = read_rows(DATASET)
    a = split(rows, 0.15, 42)
    b = split(rows, 0.15, 42)
    assert a == b
    train, evals = a
    assert len(train) + len(evals) == len(rows)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evals}
    assert split(rows, 0.15, 7) != a
    assert stats(train, evals, [])["rows_eval"] == len(evals)


@pytest.mark.parametrize("content,message", [
    (b'{"prompt": "a", "response": "b"}\n\xff\xfe\n', "data.jsonl:2: not UTF-8"),
    (b'{"prompt": "a", "response": "b"}\n{"prompt": "a"\n', "data.jsonl:2: not JSON"),
    (b'["prompt", "response"]\n', "data.jsonl:1: a JSON list, expected an object"),
    (b'{"prompt": "a"}\n', "data.jsonl:1: missing key 'response'"),
    (b'{"prompt": "a", "response": 3}\n', "data.jsonl:1: 'response' is a int, expected a string"),
    (b'{"prompt": "  ", "response": "b"}\n', "data.jsonl:1: 'prompt' is empty"),
    (b'{"prompt": "a", "response": "b"}\n' * 3, "3 rows; need at least 10"),
])
def test_bad_rows_fail_with_line_number(tmp_path, content, message):
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError) as e:
        read_rows(path)
    assert message in str(e.value)


def test_duplicates_warn_not_fail(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps({"prompt": f"q{i}", "response": "a"}) for i in range(12)]
    lines.append(json.dumps({"prompt": "Q3", "response": "b"}))
    path.write_text("\n".join(lines))
    rows, warnings = read_rows(path)
    assert len(rows) == 13 and warnings == [f"{path}:13: duplicate prompt of line 4"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_random_bytes_never_crash(tmp_path, blob):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(blob)
    try:
        read_rows(path)
    except UserError:
        pass


keys = st.sampled_from(["prompt", "response", "x"])
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(keys, c, max_size=3), max_leaves=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(json_values, min_size=1, max_size=15))
def test_random_json_never_crash(tmp_path, values):
    path = tmp_path / "fuzz.jsonl"
    path.write_text("\n".join(json.dumps(v) for v in values))
    try:
        rows, _ = read_rows(path)
        assert all(isinstance(r["prompt"], str) and r["prompt"] for r in rows)
    except UserError:
        pass

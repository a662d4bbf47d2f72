"""Stage scripts: bad input fails before heavy work with one line and exit code 2; outputs are atomic."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, stage_args, write_params
from ondevice.atomic import atomic_dir


def run_script(name, *args, cwd=ROOT, adapter="travel"):
    """A stage script with dvc.yaml's arguments (its paths), `args` on top."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), *stage_args(name, adapter), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def params_with(tmp_path, section, key, value):
    return str(write_params(tmp_path / "params.yaml", {f"{section}.{key}": value}))


@pytest.mark.parametrize("script,section,key,value,message", [
    ("quantize", "quantize", "algorithm", "awk", "error: params.yaml: quantize.algorithm='awk' is not allowed"),
    ("finetune", "finetune", "template", "{prompt}", "lacks a placeholder"),
    ("model", "model", "source", "/no/such/folder", "model.source=/no/such/folder: no config.json there"),
    ("model", "model", "source", "embedded:gpt-9", "model.source=embedded:gpt-9 is unknown"),
    ("data", "adapters.travel", "data", "missing.jsonl", "data file missing.jsonl not found"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, script, section, key, value, message):
    out = run_script(script, "--params", params_with(tmp_path, section, key, value), "--out", str(tmp_path / "o"))
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert not (tmp_path / "o").exists()


def test_model_stage_rejects_group_size_before_loading(tmp_path, tiny_dir):
    write_params(tmp_path / "params.yaml", {"model.source": str(tiny_dir), "quantize.group_size": 256})
    out = run_script("model", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and "group_size=256 does not divide the model's hidden_size=64" in out.stderr


def test_atomic_dir_keeps_previous_output_on_error(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "a").write_text("half")
        raise RuntimeError("crash mid-write")
    assert (final / "a").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_sigkill_mid_write_leaves_previous_output(tmp_path):
    """A killed writer leaves the old output and only a hidden temp dir, which the next run ignores."""
    final = tmp_path / "out"
    final.mkdir()
    (final / "a").write_text("old")
    code = ("import time,sys; sys.path.insert(0, %r)\n"
            "from ondevice.atomic import atomic_dir\n"
            "with atomic_dir(%r) as t:\n"
            "    (t/'a').write_text('new'); print('writing', flush=True); time.sleep(60)\n") % (str(ROOT), str(final))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (final / "a").read_text() == "old"
    with atomic_dir(final) as tmp:
        (tmp / "a").write_text("next")
    assert (final / "a").read_text() == "next"


def _start_model_stage(tmp_path):
    """The real `model` stage on the embedded GGUF (about 20 s of loading: time to interrupt it)."""
    out = tmp_path / "models" / "base"
    proc = subprocess.Popen([os.path.abspath(sys.executable), str(ROOT / "scripts" / "model.py"),
                             "--params", str(ROOT / "params.yaml"), "--out", str(out),
                             "--metrics", str(tmp_path / "m.json")], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # Ctrl-C as in a terminal, even where the test run itself ignores SIGINT (a
                            # background job of a non-interactive shell does, and its children inherit that)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until it is writing into its temp dir
        if list((tmp_path / "models").glob(".base.tmp-*")) if (tmp_path / "models").exists() else []:
            break
        time.sleep(0.2)
    return proc, out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_stage_leaves_previous_output_and_next_run_recovers(tmp_path, sig):
    previous = tmp_path / "models" / "base"
    previous.mkdir(parents=True)
    (previous / "config.json").write_text("{}")
    proc, out = _start_model_stage(tmp_path)
    time.sleep(1)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert (out / "config.json").read_text() == "{}"  # the previous output, untouched
    leftovers = list((tmp_path / "models").glob(".base.tmp-*"))
    assert not leftovers if sig == signal.SIGINT else len(leftovers) <= 1
    with atomic_dir(out) as tmp:  # the next run clears what a SIGKILL left and replaces the output
        (tmp / "config.json").write_text('{"new": 1}')
    assert (out / "config.json").read_text() == '{"new": 1}'
    assert not list((tmp_path / "models").glob(".base.tmp-*"))

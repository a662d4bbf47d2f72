"""Every module a stage runs is among that stage's deps in dvc.yaml, so editing it reruns the stage
(a missing dep means `dvc repro` says "up to date" over stale results)."""
import ast
import re
from pathlib import Path

import yaml

from conftest import ROOT

# Infrastructure every stage uses that shapes no output: one-line errors, params validation, atomic writes.
INFRASTRUCTURE = {"ondevice/__init__.py", "ondevice/atomic.py", "ondevice/cli.py", "ondevice/params.py"}
# model_source's per-source handlers: imported inside materialize/resolve, which only the model stage runs.
SOURCE_HANDLERS = {"ondevice/azureml_source.py", "ondevice/random_source.py", "ondevice/gguf_gemma.py",
                   "ondevice/azure.py", "ondevice/register.py"}


def imported_modules(path: Path, seen: set[Path] | None = None) -> set[Path]:
    """The ondevice/*.py files a file imports, followed through their own imports (lazy ones too)."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in (n for n in names if n.startswith("ondevice")):
            base = ROOT / name.replace(".", "/")
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.exists() and candidate not in seen:
                    seen.add(candidate)
                    imported_modules(candidate, seen)
    return seen


def stages() -> dict[str, tuple[Path, list[str], str]]:
    """name -> (its script, its deps without templated ones, its cmd as written in dvc.yaml)."""
    out = {}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        stage = stage.get("do", stage)
        script = re.search(r"python (scripts/\w+\.py)", stage["cmd"]).group(1)
        out[name] = (ROOT / script, [d for d in stage["deps"] if "${" not in d], stage["cmd"])
    return out


def uncovered(name: str, script: Path, deps: list[str]) -> list[str]:
    used = {str(p.relative_to(ROOT)) for p in imported_modules(script)} - INFRASTRUCTURE
    if name != "model":
        used -= SOURCE_HANDLERS
    return sorted(u for u in used if not any(u == d or u.startswith(d.rstrip("/") + "/") for d in deps))


def test_every_stage_declares_the_code_it_runs():
    missing = {name: uncovered(name, script, deps) for name, (script, deps, _) in stages().items()}
    assert {name: m for name, m in missing.items() if m} == {}
    for name, (script, deps, _) in stages().items():
        assert str(script.relative_to(ROOT)) in deps, f"{name} does not depend on its own script"


def test_a_dropped_dep_is_caught():
    script, deps, _ = stages()["evaluate"]
    assert uncovered("evaluate", script, [d for d in deps if d != "ondevice/runtime.py"]) == ["ondevice/runtime.py"]


def option_defaults(script: Path) -> dict[str, object]:
    """Each click option of a script with its default (None where it has none)."""
    out = {}
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "option":
            flag = next(a.value for a in node.args if isinstance(a, ast.Constant) and a.value.startswith("--"))
            default = next((k.value for k in node.keywords if k.arg == "default"), None)
            out[flag] = default.value if isinstance(default, ast.Constant) else default
    return out


def test_paths_live_only_in_dvc_yaml():
    """A stage script has no path of its own (a click default would be a second copy, free to drift
    from dvc.yaml's outs), and its cmd passes every path option the script requires."""
    for name, (script, _, cmd) in stages().items():
        options = option_defaults(script)
        pathlike = {f: d for f, d in options.items() if isinstance(d, str) and "/" in d}
        assert pathlike == {}, f"{script.name} keeps paths of its own: {pathlike}"
        cmd = cmd.split()
        required = [f for f, d in options.items() if d is None and f not in ("--params", "--float-base")]
        assert [f for f in required if f not in cmd] == [], f"{name}: dvc.yaml's cmd lacks some of {required}"

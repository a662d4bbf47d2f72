"""Every stage's deps in dvc.yaml are exactly the modules it runs: editing one reruns the stage (a missing
dep means `dvc repro` says "up to date" over stale results), and editing any other reruns nothing (#30)."""
import ast
import re
from pathlib import Path

import yaml

from conftest import ROOT

# Infrastructure every stage uses that shapes no output: one-line errors, params validation and its
# schema (DVC tracks the values as params), atomic writes.
INFRASTRUCTURE = {"ondevice/__init__.py", "ondevice/atomic.py", "ondevice/cli.py", "ondevice/params.py",
                  "ondevice/sections.py"}


def direct_imports(path: Path, packages: bool = True) -> set[Path]:
    """The ondevice/*.py files a file imports itself (lazy imports too), with the packages they sit in
    unless `packages` is False (importing ondevice.quantize.head runs ondevice/quantize/__init__.py),
    and the sibling modules it names as files (Olive loads ondevice/quantize/olive_data.py by path)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"\w+\.py", node.value):
            if path.is_relative_to(ROOT / "ondevice") and (path.parent / node.value).is_file():
                out.add(path.parent / node.value)
        for name in (n for n in names if n.split(".")[0] == "ondevice"):
            parts = name.split(".")
            for i in range(1 if packages else len(parts), len(parts) + 1):
                base = ROOT.joinpath(*parts[:i])
                out |= {c for c in (base.with_suffix(".py"), base / "__init__.py") if c.is_file()}
    return out - {path}


def imported_modules(path: Path, seen: set[Path] | None = None) -> set[Path]:
    """The ondevice/*.py files a file runs: its imports, followed through their own imports."""
    seen = set() if seen is None else seen
    for module in direct_imports(path) - seen:
        seen.add(module)
        imported_modules(module, seen)
    return seen


def stages() -> dict[str, tuple[Path, list[str], str]]:
    """name -> (its script, its deps without templated ones, its cmd as written in dvc.yaml)."""
    out = {}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        stage = stage.get("do", stage)
        script = re.search(r"python (scripts/\w+\.py)", stage["cmd"]).group(1)
        out[name] = (ROOT / script, [d for d in stage["deps"] if "${" not in d], stage["cmd"])
    return out


def used(script: Path) -> set[str]:
    """What the script runs, less infrastructure and the packages' empty __init__.py files (rooms, no code)."""
    return {str(p.relative_to(ROOT)) for p in imported_modules(script) if p.stat().st_size} - INFRASTRUCTURE


def declared(deps: list[str]) -> set[str]:
    """The ondevice modules the deps cover (a folder dep covers every module under it)."""
    out = set()
    for dep in (d for d in deps if d.startswith("ondevice")):
        path = ROOT / dep
        files = [path] if path.is_file() else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
        out |= {str(p.relative_to(ROOT)) for p in files}
    return out


def uncovered(script: Path, deps: list[str]) -> list[str]:
    return sorted(used(script) - declared(deps))


def test_every_stage_declares_the_code_it_runs():
    missing = {name: uncovered(script, deps) for name, (script, deps, _) in stages().items()}
    assert {name: m for name, m in missing.items() if m} == {}
    for name, (script, deps, _) in stages().items():
        assert str(script.relative_to(ROOT)) in deps, f"{name} does not depend on its own script"


def test_no_stage_declares_code_it_does_not_run():
    """An extra dep is a spurious rerun: editing that module reruns a stage whose outputs cannot change."""
    for name, (script, deps, _) in stages().items():
        assert [d for d in deps if d.startswith("ondevice") and not (ROOT / d).exists()] == [], name
        assert sorted(declared(deps) - used(script)) == [], f"{name} lists modules it does not run"


# Who reruns when a module is edited: stage names as dvc.yaml writes them (a foreach stage once).
LISTED_BY = {
    "ondevice/sources/model_source.py": {"model"},
    "ondevice/sources/random_source.py": {"model"},
    "ondevice/ship/azure.py": {"model"},
    "ondevice/sources/embedded.py": {"model"},
    "ondevice/measure/gguf_peer.py": {"benchmark"},
    "ondevice/tokenizer.py": {"model", "data", "quantize", "reference", "finetune", "float_lora", "optimize",
                              "evaluate"},
    "ondevice/quantize/awq.py": {"quantize", "reference"},
    "ondevice/checkpoint.py": {"quantize", "reference", "finetune", "float_lora", "optimize", "evaluate"},
    "ondevice/onnx_folder.py": {"optimize", "evaluate", "benchmark"},
    "ondevice/export/builder.py": {"optimize", "benchmark"},  # the builder: our build and its reference build
    "ondevice/export/build.py": {"optimize"},
    "ondevice/export/onnx_lora.py": {"optimize", "adapter", "evaluate", "benchmark"},
    "ondevice/ship/register.py": {"register"},
}


def test_an_edit_reruns_only_the_stages_that_run_it():
    listed = {module: {name for name, (_, deps, _) in stages().items() if module in declared(deps)}
              for module in LISTED_BY}
    assert listed == LISTED_BY


def test_a_dropped_dep_is_caught():
    script, deps, _ = stages()["evaluate"]
    assert uncovered(script, [d for d in deps if d != "ondevice/runtime/client.py"]) == ["ondevice/runtime/client.py"]


def test_ondevice_modules_import_no_cycle():
    """No module imports one that imports it back, lazily or not (model_source and random_source did)."""
    modules = [p for p in (ROOT / "ondevice").rglob("*.py") if "__pycache__" not in p.parts]
    # a package's __init__ runs before its submodules, which is no cycle: explicit imports only
    graph = {m: direct_imports(m, packages=False) for m in modules}
    cycles = sorted(str(m.relative_to(ROOT)) for m in modules if m in imported_from(m, graph))
    assert cycles == []


def imported_from(module: Path, graph: dict[Path, set[Path]]) -> set[Path]:
    seen, todo = set(), [module]
    while todo:
        for d in graph[todo.pop()] - seen:
            seen.add(d)
            todo.append(d)
    return seen


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


def test_every_stage_is_one_run_with_its_typed_section():
    """The stage contract (README "The pipeline"): each script is a short click shell that calls one
    library `run(inputs..., out_dir, cfg) -> metrics`, cfg being its params section as a typed object."""
    import importlib
    import inspect

    outputs = {"out_dir", "out", "out_path", "card", "plots_dir"}  # a folder, or the file the stage writes
    for name, (script, _, _) in stages().items():
        source = script.read_text()
        runs = [node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)
                and node.module and node.module.startswith("ondevice") and any(a.name == "run" for a in node.names)]
        assert len(runs) == 1, f"{script.name} should import one library run()"
        params = list(inspect.signature(importlib.import_module(runs[0]).run).parameters)
        assert "cfg" in params and params[params.index("cfg") - 1] in outputs, (name, params)
        assert "P.section(" in source or "P.adapter(" in source, f"{script.name} passes a typed section"
        assert len(source.splitlines()) <= 45, f"{script.name} is a shell of about 40 lines"

"""`dvc plots show` renders offline: the committed .dvc/config names .dvc/plots/offline/template.html, which
inlines vendored npm builds of vega, vega-lite and vega-embed in place of dvc-render's CDN <script src> tags."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

from dvc_render.base import Renderer
from dvc_render.html import render_html
from dvc_render.vega import VegaRenderer

from conftest import ROOT

OFFLINE = ROOT / ".dvc" / "plots" / "offline"
TEMPLATE = OFFLINE / "template.html"
DVC = Path(sys.executable).parent / "dvc"  # the venv's dvc
REMOTE_SRC = re.compile(r"""<script\b[^>]*\bsrc\s*=\s*["']?\s*(https?:)?//[^"'\s>]*""", re.IGNORECASE)

_spec = importlib.util.spec_from_file_location("plots_offline_build", OFFLINE / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)


def offline_problems(html: str) -> list[str]:
    """Why a plots page would not render without a network ([] when it would)."""
    problems = [f"remote script: {m.group(0)}" for m in REMOTE_SRC.finditer(html)]
    for name, version in build.PINS.items():
        if f'<script data-vendored="{name}@{version}">' not in html:
            problems.append(f"no inline script for {name}@{version}")
        if f'"{version}"' not in html or build.library_code(name) not in html:
            problems.append(f"{name}@{version}'s vendored build is not inlined")
    return problems


def test_template_is_generated_from_the_vendored_builds():
    html = TEMPLATE.read_text(encoding="utf-8")
    assert html == build.render(), "template.html is stale: python .dvc/plots/offline/build.py"
    assert "{plot_divs}" in html and "{scripts}" not in html  # {scripts} is where dvc-render puts its CDN tags
    for name in build.PINS:
        assert (OFFLINE / f"LICENSE.{name}").read_text().startswith("Copyright (c) 2015")


def test_checker_rejects_dvc_default_page(tmp_path):
    """The same renderer through DVC's default page (CDN scripts) fails the check; through ours it passes."""
    plot = VegaRenderer([{"step": 0, "loss": 2.0}, {"step": 1, "loss": 1.5}], "loss.tsv", x="step", y="loss")
    default = Path(render_html([plot], tmp_path / "default.html")).read_text()
    problems = offline_problems(default)
    assert sum(p.startswith('remote script: <script src="https://cdn.jsdelivr.net/npm/vega') for p in problems) == 3
    assert len(problems) == 3 + 2 * len(build.PINS), problems  # and none of the vendored builds
    ours = Path(render_html([plot], tmp_path / "ours.html", html_template=TEMPLATE)).read_text()
    assert offline_problems(ours) == [] and "vegaEmbed('#loss_tsv', spec);" in ours


def test_dvc_plots_show_writes_an_offline_page(tmp_path):
    """Plain `dvc plots show` (the template comes from .dvc/config) on the committed plots."""
    out = tmp_path / "dvc_plots"
    proc = subprocess.run([str(DVC), "plots", "show", "-o", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    html = (out / "index.html").read_text(encoding="utf-8")
    assert offline_problems(html) == []
    committed = sorted([*ROOT.glob("dvclive/finetune/*/plots/metrics/loss.tsv"), *ROOT.glob("plots/benchmark/*.csv")])
    assert len(committed) >= 4, committed
    for path in committed:
        div = Renderer.remove_special_chars(path.relative_to(ROOT).as_posix())
        assert f'<div id = "{div}">' in html and f"vegaEmbed('#{div}', spec);" in html, div

"""DVCLive as the stages use it: metrics and per-step plots in the layout `dvc exp show` and
`dvc plots` read, declared in dvc.yaml (so DVCLive writes no dvc.yaml of its own and, inside a
stage, makes no experiment of its own)."""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path


def _live_class():
    with warnings.catch_warnings():  # dvclive imports pynvml for system monitoring, which we leave off
        warnings.simplefilter("ignore")
        from dvclive import Live
    from scmrepo.exceptions import SCMError

    class StageLive(Live):
        def _init_dvc(self):
            # DVCLive 3.49 asks Git for HEAD before checking that there is a commit, so a stage run
            # in a fresh `git init` repo would fail (dvclive#522); such a run saves no experiment anyway.
            try:
                super()._init_dvc()
            except SCMError:
                self._save_dvc_exp = False
                self._dvc_file = self._init_dvc_file()

    return StageLive


@contextmanager
def live(directory: Path | str):
    """A DVCLive session writing into a temp dir that replaces `directory` only when the block ends
    without error: a stage that stops (a NaN loss, Ctrl-C) leaves the previous complete log."""
    from ondevice.atomic import atomic_dir

    with atomic_dir(directory) as tmp:
        with _live_class()(dir=str(tmp), save_dvc_exp=False, dvcyaml=None, report=None) as session:
            yield session


def log_summary(directory: Path | str, values: dict) -> None:
    """One set of headline numbers (names may nest with '/'): DVCLive's metrics.json, no plots."""
    with live(directory) as session:
        for name, value in values.items():
            session.log_metric(name, value, plot=False)

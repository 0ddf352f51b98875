"""The replication driver's `settings-probe` step (experiments/replication/replicate.py): the
commands it runs through the driver's `run`, and its JSON in the study's packed archive.
CPU, offline, no model: `run` is replaced by a recorder.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
from pathlib import Path

import pytest

DRIVER = Path(__file__).resolve().parents[2] / "experiments" / "replication" / "replicate.py"


@pytest.mark.parametrize("rehearsal", [True, False], ids=["rehearsal", "real"])
def test_settings_probe_converts_once_then_probes_into_the_study(driver, monkeypatch, tmp_path,
                                                                 rehearsal: bool) -> None:
    args = argparse.Namespace(rehearsal=rehearsal, study="probe-study", windows=2,
                              ctx="512" if rehearsal else "64k")
    layout = driver.Layout(args)
    commands: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(driver, "run", lambda layout, step, command: commands.append(
        (step, command)))
    driver.STEPS["settings-probe"](layout, args)

    folder = layout.root / "runs" / "settings-probe"
    out = layout.root / "eval" / "settings-probe" / "settings_probe.json"
    extra = ["--levels", "2", "--topk", "128", "--tile", "64"] if rehearsal else []
    assert commands == [
        ("settings-probe", [sys.executable, "-m", "lh_convert.cli", "convert", "--model",
                            "smollm2-135m-gguf", "--out", str(folder), "--ctx", args.ctx,
                            "--rope", "none" if rehearsal else "theta", *extra]),
        ("settings-probe", [sys.executable, str(DRIVER.with_name("settings_probe.py")),
                            "--run", str(folder), "--data", str(layout.corpus),
                            "--windows", "2", "--out", str(out)])]

    folder.mkdir(parents=True)  # converted: a second call only probes
    (folder / "manifest.json").write_text("{}")
    commands.clear()
    driver.STEPS["settings-probe"](layout, args)
    assert [command[1] for _, command in commands] == [str(DRIVER.with_name("settings_probe.py"))]

    out.write_text("{}")  # what settings_probe.py would write: `pack` takes it
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    driver.step_pack(layout, args)
    with tarfile.open(tmp_path / "out" / "probe-study.tar.gz") as tar:
        assert "eval/settings-probe/settings_probe.json" in tar.getnames()

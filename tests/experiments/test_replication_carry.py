"""What the replication driver carries to and keeps from a device call
(experiments/replication/replicate.py): the GGUF split that balances the two calls, the wheels
travelling installed as one xz tar, and the wall time of a command the call's limit stopped.
CPU, offline: a hand-made pure-Python wheel, installed by pip with --no-index.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

import pytest


@pytest.mark.parametrize("total, call1_rest, arm_rest", [(100, 10, 30), (101, 0, 0),
                                                          (50, 40, 0), (50, 200, 0),
                                                          (50, 0, 200)])
def test_split_point_balances_the_two_calls_and_keeps_both_parts(driver, total, call1_rest,
                                                                 arm_rest) -> None:
    first = driver.split_point(total, call1_rest, arm_rest)
    assert 1 <= first <= total - 1  # neither part is empty
    call1, arm = first + call1_rest, total - first + arm_rest
    if 1 < first < total - 1:  # not clamped: the two calls differ by at most one byte
        assert abs(call1 - arm) <= 1
    elif first == 1:  # clamped: call 1 carries more than the arm even with one byte
        assert call1 >= arm
    else:
        assert arm >= call1


def _wheel(folder: Path) -> Path:
    """A minimal py3-none-any wheel of package `carried` (what pip needs: METADATA, WHEEL,
    RECORD)."""
    path = folder / "carried-0.1-py3-none-any.whl"
    info = "carried-0.1.dist-info"
    files = {"carried/__init__.py": "VALUE = 42\n",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: carried\nVersion: 0.1\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


def test_pack_site_then_unpack_site_installs_the_wheels_files(driver, tmp_path) -> None:
    archive = tmp_path / ".whl" / "site.tar.xz"
    archive.parent.mkdir()
    driver.pack_site([_wheel(tmp_path)], archive)
    assert archive.is_file() and not (archive.parent / "site.staging").exists()
    assert not archive.with_name("site.tar.xz.tmp").exists()  # written, then renamed

    site = tmp_path / "site"
    (site / "carried").mkdir(parents=True)
    (site / "carried" / "__init__.py").write_text("VALUE = 0\n")  # replaced, not kept
    driver.unpack_site(archive, site)
    assert (site / "carried" / "__init__.py").read_text() == "VALUE = 42\n"
    assert (site / "carried-0.1.dist-info" / "METADATA").is_file()
    assert not (site / "site.staging").exists()  # the staging folder's name is stripped


def test_run_keeps_waiting_through_repeated_interrupts_and_records_the_wall_time(
        driver, monkeypatch, tmp_path) -> None:
    """Two interrupts (the call's limit, then another) while the command saves: `run` waits for
    it, and its timings line is written (the lr6e-4 arm of 2026-12-06 lost its `recover` line)."""
    layout = driver.Layout(argparse.Namespace(rehearsal=True, study="s"))
    layout.root.mkdir(parents=True)
    calls = {"n": 0}
    real_echo = driver._echo_lines

    def interrupted_twice(process, log):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise KeyboardInterrupt
        real_echo(process, log)

    monkeypatch.setattr(driver, "_echo_lines", interrupted_twice)
    with pytest.raises(SystemExit, match="exit status 3"):
        driver.run(layout, "arm", [sys.executable, "-c", "print('saved'); raise SystemExit(3)"])
    assert calls["n"] == 3
    (line,) = (layout.root / "timings.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["step"] == "arm" and record["exit"] == 3 and record["seconds"] >= 0
    assert "saved" in (layout.logs / "arm.log").read_text()

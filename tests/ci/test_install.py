"""The install a newcomer copies from the README: CI runs it as written, and its constraints
resolve on the public index alone (no local wheel folder), keeping triton at 3.6."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _readme_commands() -> dict[str, str]:
    spec = importlib.util.spec_from_file_location("readme_commands",
                                                  REPO / ".ci" / "readme_commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.readme_commands((REPO / "README.md").read_text(encoding="utf-8"))


def test_ci_runs_the_readme_test_command_as_written() -> None:
    commands = _readme_commands()
    install, _, demo_tail = commands["demo"].rpartition(" && ")
    test_install, _, test_tail = commands["test"].rpartition(" && ")
    assert (demo_tail, test_tail) == ("lh-convert demo", "pytest")
    assert install == test_install  # one install line for both
    assert "-c .ci/constraints.txt" in install and '-e ".[dev]"' in install
    ci = (REPO / ".ci" / "run").read_text()
    assert "command=$(python3 .ci/readme_commands.py test)" in ci
    assert 'bash -c "$command"' in ci
    assert "pip install" not in ci  # no private install step beside the README's


def test_the_console_script_the_demo_command_calls_is_installed() -> None:
    script = Path(sys.executable).with_name("lh-convert")  # what tests/lh_convert/test_demo.py runs
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("lh-convert, version "), done.stderr


def test_constraints_pin_no_local_build_and_keep_triton_36() -> None:
    lines = [line.strip() for line in (REPO / ".ci" / "constraints.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert not [line for line in lines if "+" in line], "a local version the public index lacks"
    assert "triton==3.6.0" in lines
    assert importlib.metadata.version("triton") == "3.6.0"
    # the suite's torch: the CPU build on disk, 2.13.0 by its public version
    assert importlib.metadata.version("torch").split("+")[0] == "2.13.0"


def _public_index_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


def _public_resolution(folder: Path) -> dict | None:
    """pip --isolated ignores this machine's wheel folder and mirrors: the public index only."""
    if not _public_index_reachable():
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {"args": [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run",
                     "--ignore-installed", "--quiet", "--report", str(folder / "report.json"),
                     "-c", str(REPO / ".ci" / "constraints.txt"), "-e", f"{REPO}[dev]"],
            "env": env, "cwd": folder}


# pip resolving on the public index takes one to two minutes (it downloads every torch it
# tries, CUDA libraries included: the index serves no separate metadata), and observes nothing
# of this session: it starts right after collection, runs beside the suite, and this test
# runs last (tests/conftest.py: started_early).
@pytest.mark.slow
@pytest.mark.started_early(command=_public_resolution)
def test_constraints_resolve_on_the_public_index_alone(started_early) -> None:
    if started_early is None:
        pytest.skip("the public package index cannot be reached from here")
    done = started_early.wait(timeout=1200)
    report = started_early.folder / "report.json"
    assert done.returncode == 0, done.stderr[-3000:]
    chosen = {item["metadata"]["name"].lower(): item["metadata"]["version"]
              for item in json.loads(report.read_text())["install"]}
    assert chosen["triton"] == "3.6.0"
    assert "+" not in chosen["torch"]
    assert not any("/opt/" in item["download_info"]["url"]
                   for item in json.loads(report.read_text())["install"]
                   if item["metadata"]["name"] != "lh-convert")

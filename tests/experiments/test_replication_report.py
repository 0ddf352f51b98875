"""The replication's `report` step (experiments/replication/report.py): archives packed on different
device machines merge into one record (later files replace earlier ones, logs add up without
repeats), and the section it writes states the arms' numbers computed from the metrics.
CPU, offline, synthetic archives, under a second.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
from pathlib import Path

import pytest

REPORT = Path(__file__).resolve().parents[2] / "experiments" / "replication" / "report.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("replication_report", REPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _archive(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _metrics(stage1_loss: float, recovery_loss: float, step_s: tuple[float, float],
             switch_loss: float | None = None) -> str:
    """4 steps (2 + 2) of 1M tokens each, an eval row after each stage; with `switch_loss`, the
    dense validation recovery logs at the switch (step 2) before its first step."""
    rows = []
    for step in range(1, 5):
        stage = "lighthouse" if step <= 2 else "dense"
        rows.append({"kind": "train", "stage": stage, "step": step, "tokens": 10**6 * step,
                     "loss": stage1_loss if step <= 2 else recovery_loss,
                     "tokens_per_s": 10**6 / step_s[step > 2], "step_s": step_s[step > 2],
                     "memory_gib": 1.0})
        if step in (2, 4):
            rows.append({"kind": "eval", "stage": stage, "step": step,
                         "val_loss": stage1_loss if step == 2 else recovery_loss,
                         "val_late_loss": stage1_loss + 0.1})
        if step == 2 and switch_loss is not None:
            rows.append({"kind": "eval", "stage": "dense", "step": 2, "val_loss": switch_loss,
                         "val_late_loss": switch_loss})
    return _jsonl(rows)


def _timing(step: str, seconds: float) -> dict:
    return {"step": step, "command": f"python3 -m lh_convert.cli {step}", "seconds": seconds,
            "exit": 0}


def test_archives_of_two_calls_merge_into_one_record(report, tmp_path):
    shared = _timing("dense", 100.0)
    first = _archive(tmp_path / "one.tar.gz", {
        "runs/dense/metrics.jsonl": _jsonl([{"kind": "eval", "step": 1}]),
        "timings.jsonl": _jsonl([shared, _timing("lighthouse", 60.0)]),
        "logs/eval.log": "first machine\n"})
    second = _archive(tmp_path / "two.tar.gz", {
        "runs/dense/metrics.jsonl": _jsonl([{"kind": "eval", "step": 2}]),
        "timings.jsonl": _jsonl([shared, _timing("eval", 30.0)]),
        "logs/eval.log": "second machine\n",
        "eval/original/valloss.json": "{}"})
    root = tmp_path / "merged"
    report.merge_archives([first, second], root)

    timings = [json.loads(line) for line in (root / "timings.jsonl").read_text().splitlines()]
    assert [t["step"] for t in timings] == ["dense", "lighthouse", "eval"]  # the repeat once
    assert (root / "logs" / "eval.log").read_text() == "first machine\nsecond machine\n"
    # A run's own metrics are one file of one run: the later archive's copy replaces it.
    assert json.loads((root / "runs/dense/metrics.jsonl").read_text())["step"] == 2
    assert (root / "eval/original/valloss.json").is_file()
    assert not list(tmp_path.glob("merged.part*"))  # the scratch folders are gone


def test_an_archive_can_give_only_some_arms(report, tmp_path):
    """`PATH#dense`: an earlier session's dense arm beside a later session's other arms; the
    earlier lighthouse arm, its eval and its timings stay out of the record."""
    earlier = _archive(tmp_path / "earlier.tar.gz", {
        "runs/dense/metrics.jsonl": "dense\n", "runs/lighthouse/metrics.jsonl": "old\n",
        "eval/dense/valloss.json": "{}", "eval/lighthouse/valloss.json": "{}",
        "logs/dense.log": "dense log\n", "logs/lighthouse.log": "old log\n",
        "recipes/dense.toml": "", "recipes/lighthouse.toml": "", "corpus/meta.json": "{}",
        "timings.jsonl": _jsonl([
            _timing("dense", 100.0), _timing("lighthouse", 60.0),
            {**_timing("eval", 9.0), "command": "eval-one --model dense"},
            {**_timing("eval", 8.0), "command": "eval-one --model lighthouse"}])})
    later = _archive(tmp_path / "later.tar.gz", {
        "runs/lighthouse/metrics.jsonl": "new\n",
        "timings.jsonl": _jsonl([_timing("lighthouse", 50.0)])})
    root = tmp_path / "merged"
    report.merge_archives([f"{earlier}#dense", later], root)

    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == ["corpus/meta.json", "eval/dense/valloss.json", "logs/dense.log",
                     "recipes/dense.toml", "runs/dense/metrics.jsonl",
                     "runs/lighthouse/metrics.jsonl", "timings.jsonl"]
    assert (root / "runs/lighthouse/metrics.jsonl").read_text() == "new\n"
    timings = [json.loads(line) for line in (root / "timings.jsonl").read_text().splitlines()]
    assert [(t["step"], t["seconds"]) for t in timings] == [("dense", 100.0), ("eval", 9.0),
                                                            ("lighthouse", 50.0)]
    assert report.split_archive("a/b.tar.gz") == (Path("a/b.tar.gz"), None)


def test_section_reports_the_arms_from_their_metrics(report, tmp_path):
    recipe = {"recipe": {"train": {"stage1_steps": 2}}}
    archive = _archive(tmp_path / "run.tar.gz", {
        "runs/dense/metrics.jsonl": _metrics(2.0, 1.5, (4.0, 4.0)),
        "runs/lighthouse/metrics.jsonl": _metrics(3.0, 1.75, (1.0, 4.0), switch_loss=2.5),
        "runs/lighthouse/recipe.json": json.dumps(recipe),
        "timings.jsonl": _jsonl([{**_timing("dense", 150.0), "exit": 130}, _timing("dense", 50.0),
                                 _timing("lighthouse", 120.0),
                                 {**_timing("eval", 5.0), "exit": 130}])})
    out = tmp_path / "report"
    report.write_report(archives=[archive], out=out, stage1=2)
    section = (out / "section.md").read_text()

    # Tokens from the step size (1M tokens a step), tokens/s as the median over the stage.
    assert "| lighthouse | 1 | Lighthouse | 2 | 2.00M | 2 | 1,000,000 |" in section
    assert "| lighthouse | 2 (recovery) | dense | 2 | 2.00M | 8 | 250,000 |" in section
    assert "| dense | 1 | dense | 2 | 2.00M | 8 | 250,000 |" in section
    # Wall time from timings (120 / (150 + 50): the interrupted run counts), training steps
    # alone from step_s ((2 + 8) / 16).
    assert "dense 200s, lighthouse 120s (0.60x)" in section
    assert "dense 16s, lighthouse 10s (0.62x)" in section
    # Final validation loss and the jumps at the switch: training loss, recovery's first minus
    # stage 1's last; validation, the dense validation at the switch minus stage 1's last (the
    # dense arm, without one, gives its first recovery validation and says how much later).
    assert "| lighthouse | 1.7500 | 3.1000 | -1.2500 | -0.5000 | n/a (fell) |" in section
    assert "| dense | 1.5000 | 2.1000 | - | - | - |" in section  # nothing switches in it
    # Dense validations at 8s (2.0) and 16s (1.5) of steps reach 1.75 at 12s; lighthouse's
    # first dense validation (the switch, 2.5) then 1.75 after its 10s of steps.
    assert ("Time to the lighthouse arm's final validation loss (1.7500): lighthouse 10s of "
            "training steps, dense 12s (linear between validations)") in section
    assert report._time_to_reach([(5.0, 1.0)], 1.5) == "5s or less (its first validation)"
    assert report._time_to_reach([(5.0, 2.0)], 1.5) == "not within its run"
    assert (out / "quality_vs_time.png").stat().st_size > 0
    # Paired with the dense arm step for step: +1 over stage 1, +0.25 over each recovery step.
    assert "| arm | steps 1-2 | steps 3-3 | steps 4-4 |" in section
    assert "| lighthouse | +1.000 | +0.250 | +0.250 |" in section
    assert (out / "val_loss.png").stat().st_size > 0 and (out / "train_loss.png").is_file()
    # A command stopped by SIGINT and run again resumed; one that was never rerun failed.
    assert ("`python3 -m lh_convert.cli dense`: 150s (interrupted at the call's time limit"
            in section)
    assert "`python3 -m lh_convert.cli eval`: 5s (failed, exit 130)" in section


def test_an_arm_cut_off_after_its_last_validation_is_compared_where_it_was_measured(report):
    """Seen 2026-12-04: an arm stopped during its final validation; its last loss is from an
    earlier step, so the dense arm is read at that step's seconds, and the record says so."""
    dense = [json.loads(line) for line in _metrics(3.0, 2.0, (1.0, 1.0)).splitlines()]
    light = [json.loads(line) for line in _metrics(4.0, 2.5, (0.5, 1.0)).splitlines()]
    light = [r for r in light if not (r["kind"] == "eval" and r["step"] == 4)]
    after_step_3 = next(i for i, r in enumerate(light) if r["kind"] == "train" and r["step"] == 3)
    light.insert(after_step_3 + 1, {"kind": "eval", "stage": "dense", "step": 3, "val_loss": 2.5,
                     "val_late_loss": 2.5})  # recovery's step 3 validated, step 4 not
    summary = report.study_summary({"dense": dense, "lighthouse": light, "dense-repeat": []},
                                   [], tokens_per_step=10**6)
    record = summary["arms"]["lighthouse"]
    assert record["steps_s"] == 3.0 and record["val_loss_at_steps_s"] == 2.0
    # dense validates 3.0 after 2 s and 2.0 after 4 s: read at 2 s (step 3), not at 3 s
    assert record["dense_val_loss_at_same_wall_s"] == pytest.approx(3.0)
    complete = report.study_summary({"dense": dense, "lighthouse": [
        json.loads(line) for line in _metrics(4.0, 2.5, (0.5, 1.0)).splitlines()],
        "dense-repeat": []}, [], tokens_per_step=10**6)["arms"]["lighthouse"]
    assert "val_loss_at_steps_s" not in complete
    assert complete["dense_val_loss_at_same_wall_s"] == pytest.approx(2.5)


def test_frontier_places_every_arm_that_shares_the_dense_arm(report, tmp_path):
    """`frontier` reads the dense curve from its archive, keeps the studies of that dense arm
    (by its step-seconds), reads each Lighthouse arm where its loss was measured, and marks
    the arms no other arm beats on both time and loss."""
    dense = _archive(tmp_path / "dense.tar.gz",
                     {"runs/dense/metrics.jsonl": _metrics(3.0, 2.0, (1.0, 1.0))})  # 4 s

    def study(name: str, steps_s: float, loss: float, dense_s: float = 4.0, **extra) -> dict:
        return {"study": name, "steps": 4, "arms": {
            "dense": {"steps": 4, "steps_s": dense_s, "val_loss": 2.0},
            "lighthouse": {"steps": 4, "steps_s": steps_s, "val_loss": loss, **extra}}}

    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps([
        study("fast", 2.0, 2.8), study("slow-better", 3.0, 2.4), study("dominated", 3.5, 2.9),
        study("cut", 3.9, 2.3, val_loss_at_steps_s=2.5),
        study("other-baseline", 1.0, 1.0, dense_s=9.0)]))
    rows = report.write_frontier(summary=summary, dense_archive=dense, out=tmp_path / "out")
    by_name = {row["study"]: row for row in rows}
    assert sorted(by_name) == ["cut", "dominated", "fast", "slow-better"]
    assert {name for name, row in by_name.items() if row["frontier"]} == {"fast", "cut"}
    assert by_name["cut"]["steps_s"] == 2.5 and not by_name["cut"]["complete"]
    assert by_name["fast"]["dense_at_same_s"] == pytest.approx(3.0)  # dense: 3.0 after 2 s
    assert by_name["slow-better"]["gap"] == pytest.approx(2.4 - 2.5)  # dense 2.5 after 3 s
    assert (tmp_path / "out" / "frontier.png").stat().st_size > 0
    assert "| `cut` (partial) | 2 |" in (tmp_path / "out" / "frontier.md").read_text()


def test_restore_fills_in_a_folder_the_call_already_started(driver):
    """A rehearsal's first step creates .rep/rehearsal before `restore` runs: the kept run
    inside it must still come back (the arm's `resume` found no checkpoint otherwise)."""
    rep = driver.REP
    (rep / "rehearsal" / "study" / "runs").mkdir(parents=True)
    (rep / "rehearsal" / "study" / "runs" / "step-7.pt").write_text("checkpoint\n")
    (rep / "rehearsal" / "timings.jsonl").write_text("kept\n")
    (rep / "site").mkdir()
    (rep / "site" / "kernels").symlink_to(rep.parent, target_is_directory=True)
    driver.step_save(None, None)

    shutil.rmtree(rep)
    (rep / "rehearsal").mkdir(parents=True)
    (rep / "rehearsal" / "timings.jsonl").write_text("this call's\n")
    (rep / "site").mkdir()  # a link on both sides (link_kernels ran): kept as it is
    (rep / "site" / "kernels").symlink_to(rep.parent, target_is_directory=True)
    driver.step_restore(None, None)

    assert (rep / "rehearsal" / "study" / "runs" / "step-7.pt").read_text() == "checkpoint\n"
    assert (rep / "rehearsal" / "timings.jsonl").read_text() == "this call's\n"
    assert (rep / "site" / "kernels").is_symlink()


def test_save_and_restore_carry_rep_across_device_calls(driver, tmp_path):
    """The GPU machine wipes .rep between calls but keeps /tmp: `save` copies .rep out,
    `restore` puts back what is missing and leaves what the new call carried as it is."""
    rep, keep = driver.REP, driver.KEEP
    (rep / "runs" / "dense").mkdir(parents=True)
    (rep / "runs" / "dense" / "metrics.jsonl").write_text("dense\n")
    (rep / "site").mkdir()
    (rep / "site" / "kernels").symlink_to(tmp_path, target_is_directory=True)
    (rep / "b").mkdir()
    (rep / "b" / "part").write_text("old part\n")
    driver.step_save(None, None)

    shutil.rmtree(rep)  # the next call: only its carried path is there
    (rep / "b").mkdir(parents=True)
    (rep / "b" / "part").write_text("carried part\n")
    driver.step_restore(None, None)

    assert (rep / "runs" / "dense" / "metrics.jsonl").read_text() == "dense\n"
    assert (rep / "site" / "kernels").is_symlink()  # links stay links
    assert (rep / "b" / "part").read_text() == "carried part\n"  # what was carried wins
    assert not keep.with_name("keep.tmp").exists()


def test_interrupted_step_lets_the_command_save_before_exiting(tmp_path):
    """`timeout -s INT` signals the driver and lh-convert together; the driver must keep reading
    until lh-convert has saved (here: a stand-in that takes 1 s to save after SIGINT), record
    the interrupted command, and exit non-zero, so the next device call resumes the run."""
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent("""
        import sys, time
        try:
            print("training", flush=True)  # inside: the signal may come right after it
            time.sleep(60)
        except KeyboardInterrupt:
            time.sleep(1)
            print("checkpoint saved", flush=True)
            sys.exit(130)
    """))
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(f"""
        import argparse, importlib.util, sys
        spec = importlib.util.spec_from_file_location("d", {str(REPORT.with_name('replicate.py'))!r})
        d = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(d)
        layout = d.Layout(argparse.Namespace(rehearsal=False, study=""))
        layout.root = layout.logs = __import__("pathlib").Path({str(tmp_path)!r})
        d.run(layout, "dense", [sys.executable, {str(child)!r}])
    """))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a pipe buffers
    process = subprocess.Popen([sys.executable, str(driver)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)
    watchdog = threading.Timer(30, process.kill)  # a stuck pipe fails the test, never hangs it
    watchdog.start()
    assert process.stdout.readline().startswith("$ ")
    assert process.stdout.readline() == "training\n"
    os.killpg(process.pid, signal.SIGINT)  # what timeout -s INT does to its process group
    output = process.stdout.read()
    assert process.wait(timeout=30) == 1
    watchdog.cancel()
    assert "checkpoint saved" in output and "failed with exit status 130" in output
    timing = json.loads((tmp_path / "timings.jsonl").read_text())
    assert timing["exit"] == 130 and timing["seconds"] >= 1

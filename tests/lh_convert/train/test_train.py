"""The training stages on CPU: loss falls, exact resume after SIGKILL, optimizer state carried
into recovery, FSDP2 under torchrun equals one process, and every bad input fails cleanly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lh_convert.convert.attention import CALLS
from lh_convert.train.data import DataSpec
from lh_convert.util.errors import LhConvertError
from lh_convert.train.recipes import available_recipes, load_recipe
from lh_convert.train.stages import extend, recover
from lh_convert.train.checkpoint import latest_checkpoint, load_checkpoint

@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """About 40 English-and-code documents: enough for hundreds of 512-token sequences."""
    import sysconfig

    folder = tmp_path_factory.mktemp("corpus")
    for source in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:40]:
        (folder / f"{source.stem}.txt").write_text(source.read_text(encoding="utf-8"))
    return folder


@pytest.fixture
def tiny_recipe(write_tiny_recipe):
    """``tiny_recipe(folder, model, *, steps=8, every=4, micro=1, checkpointing=False,
    deterministic=False)``: the tiny recipe, keeping two checkpoints."""

    def write(folder: Path, model: Path, *, steps: int = 8, every: int = 4, micro: int = 1,
              checkpointing: bool | str = False, deterministic: bool = False) -> Path:
        return write_tiny_recipe(folder, model, steps=steps, keep=2, micro_batch_size=micro,
                                 checkpoint_every=every, activation_checkpointing=checkpointing,
                                 deterministic=deterministic)

    return write


def _losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if json.loads(line)["kind"] == "train"]


def _cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lh_convert.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.parametrize("recipe", sorted(available_recipes()))
def test_every_recipe_loads_and_validates(recipe: str) -> None:
    loaded = load_recipe(recipe)
    assert loaded.name == recipe
    loaded.lighthouse.kernel  # noqa: B018 - raises on impossible parameters
    assert loaded.train.problem() is None


def test_both_stages_train_and_loss_falls(make_tiny_checkpoint, tiny_recipe, corpus: Path,
                                          tmp_path: Path, capsys) -> None:
    recipe = load_recipe(str(tiny_recipe(tmp_path, make_tiny_checkpoint("llama"), steps=10)))
    run = tmp_path / "run"
    first = extend(recipe=recipe, out=run, data=DataSpec(paths=(str(corpus),)), echo=print,
                   progress=True)
    assert first.final_step == 10
    second = recover(run=run, steps=None, echo=print, progress=True)
    assert second.final_step == 15
    bars = capsys.readouterr().err  # the progress bars name each stage by what runs in it
    assert "stage 1 (Lighthouse)" in bars and "stage 2 (recovery)" in bars
    losses = _losses(run)
    assert len(losses) == 15
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2, losses
    assert (run / "loss.png").stat().st_size > 10_000
    stages = [json.loads(line)["stage"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "lighthouse" in stages and "dense" in stages
    said: list[str] = []  # a finished stage returns at once, without loading the model
    assert recover(run=run, steps=None, echo=said.append, progress=False).steps_run == 0
    assert said == ["recovery already complete at step 15; nothing to do"]


def test_a_dense_baseline_names_its_stage_1_dense(make_tiny_checkpoint, tiny_recipe, corpus: Path,
                                                  tmp_path: Path, capsys) -> None:
    path = tiny_recipe(tmp_path, make_tiny_checkpoint("llama"), steps=1)
    all_four = path.read_text().replace("dense_layers = [0, -1]", "dense_layers = [0, 1, 2, 3]")
    path.write_text(all_four)
    extend(recipe=load_recipe(str(path)), out=tmp_path / "run", data=DataSpec(paths=(str(corpus),)),
           echo=print, progress=True)
    captured = capsys.readouterr()
    assert "stage 1 (dense)" in captured.err and "Lighthouse" not in captured.err


def test_selective_checkpointing_and_deterministic_mode_keep_the_losses(
        make_tiny_checkpoint, tiny_recipe, corpus: Path, tmp_path: Path) -> None:
    """Recomputing in the backward (keeping only the attention kernels' outputs) changes no
    loss, and deterministic mode is on for the stage only."""
    model = make_tiny_checkpoint("llama")
    losses = {}
    for name, checkpointing, deterministic in (("plain", False, False),
                                               ("selective", "selective", True)):
        folder = tmp_path / name
        folder.mkdir()
        recipe = load_recipe(str(tiny_recipe(folder, model, steps=4, checkpointing=checkpointing,
                                             deterministic=deterministic)))
        extend(recipe=recipe, out=folder / "run", data=DataSpec(paths=(str(corpus),)),
               echo=print, progress=False)
        losses[name] = _losses(folder / "run")
        assert not torch.are_deterministic_algorithms_enabled()
    assert len(losses["plain"]) == 4
    assert losses["selective"] == pytest.approx(losses["plain"], abs=1e-6)


def test_unknown_checkpointing_mode_is_a_recipe_error(make_tiny_checkpoint, tiny_recipe,
                                                      tmp_path: Path) -> None:
    path = tiny_recipe(tmp_path, make_tiny_checkpoint("llama"), checkpointing="sometimes")
    with pytest.raises(LhConvertError, match="activation_checkpointing = 'sometimes' must be one of 'selective', 'full', 'none'"):
        load_recipe(str(path))


def test_recover_restores_optimizer_state_and_runs_dense(make_tiny_checkpoint, tiny_recipe,
                                                         corpus: Path, tmp_path: Path,
                                                         monkeypatch) -> None:
    model = make_tiny_checkpoint("qwen2")
    recipe = load_recipe(str(tiny_recipe(tmp_path, model, steps=4, every=4)))
    run = tmp_path / "run"
    extend(recipe=recipe, out=run, data=DataSpec(paths=(str(corpus),)), echo=print, progress=False)
    stage1 = load_checkpoint(latest_checkpoint(run))
    seen: dict = {}
    original = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        # The first recovery step with state (DCP first steps once to create empty state).
        if "moments" not in seen and self.state:
            seen["moments"] = {k: v["exp_avg_sq"].clone() for k, v in
                               zip(range(len(self.state)), self.state.values())}
            seen["paths"] = dict(CALLS.counts)
        return original(self, *args, **kwargs)

    CALLS.reset()
    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    recover(run=run, steps=2, echo=print, progress=False)
    restored = list(seen["moments"].values())
    saved = [entry["exp_avg_sq"] for entry in stage1.optim_state["state"].values()]
    assert len(restored) == len(saved) > 0
    assert all(torch.equal(a, b) for a, b in zip(sorted(restored, key=torch.Tensor.sum),
                                                  sorted(saved, key=torch.Tensor.sum)))
    # Every layer ran dense in the recovery forward passes: none went through Lighthouse.
    assert seen["paths"] and not any(path == "lighthouse" for (_, path) in seen["paths"])
    assert load_checkpoint(latest_checkpoint(run)).state.stage == "dense"


def test_recovery_validates_stage_1_weights_densely_at_the_switch_once(
        make_tiny_checkpoint, tiny_recipe, corpus: Path, tmp_path: Path) -> None:
    model = make_tiny_checkpoint("llama")
    recipe = load_recipe(str(tiny_recipe(tmp_path, model, steps=4, every=4)))
    run = tmp_path / "run"
    extend(recipe=recipe, out=run, data=DataSpec(paths=(str(corpus),)), echo=print, progress=False)
    said: list[str] = []
    recover(run=run, steps=2, echo=said.append, progress=False)

    def evals() -> list[tuple[str, int, float]]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["stage"], r["step"], r["val_loss"]) for r in rows if r["kind"] == "eval"]

    first = evals()
    # Stage 1's last validation (Lighthouse), then the same weights validated dense, then the end.
    assert [(stage, step) for stage, step, _ in first] == [("lighthouse", 4), ("dense", 4),
                                                           ("dense", 6)]
    assert first[0][2] != first[1][2]  # the operator alone changed the loss
    switch = next(line for line in said if line.startswith("at the switch"))
    assert f"{first[1][2]:.4f} with dense attention, {first[0][2]:.4f} with stage 1's" in switch

    # Recovery lost before its first checkpoint (killed mid-way through writing a log line)
    # starts again from stage 1's: the cut line is dropped, and there is one switch row.
    shutil.rmtree(latest_checkpoint(run))
    assert latest_checkpoint(run).name == "step-0000004"
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"kind": "train", "stage": "dense", "st')
    recover(run=run, steps=2, echo=print, progress=False)
    assert [(stage, step) for stage, step, _ in evals()] == [(s, n) for s, n, _ in first]


def test_sigkill_then_resume_is_bit_identical(make_tiny_checkpoint, tiny_recipe, corpus: Path,
                                              tmp_path: Path) -> None:
    model = make_tiny_checkpoint("llama")
    # 20 steps (was 60): the kill still lands right after step 10's checkpoint, with two more
    # checkpoints (and their pruning, keep 2) and 10 steps still to run after the resume; the
    # claim (resumed == straight, bit for bit) does not grow with the steps after it.
    recipe = tiny_recipe(tmp_path, model, steps=20, every=5)
    args = ["extend", "--recipe", str(recipe), "--data", str(corpus)]
    straight = _cli(*args, "--out", str(tmp_path / "straight"))
    assert straight.wait(timeout=600) == 0, straight.stderr.read()

    victim = _cli(*args, "--out", str(tmp_path / "killed"))
    marker = tmp_path / "killed" / "checkpoints" / "step-0000010"
    deadline = time.monotonic() + 300
    while not marker.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL, "the run finished before it was killed"
    assert latest_checkpoint(tmp_path / "killed").name != "step-0000020"
    resumed = _cli(*args, "--out", str(tmp_path / "killed"))
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resumed from step-00000" in out + err

    final = lambda run: load_file(str(latest_checkpoint(run) / "model.safetensors"))  # noqa: E731
    a, b = final(tmp_path / "straight"), final(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "killed")


def test_fsdp2_two_processes_match_one(make_tiny_checkpoint, tiny_recipe, corpus: Path,
                                       tmp_path: Path) -> None:
    model = make_tiny_checkpoint("llama")
    single = _cli("extend", "--recipe", str(tiny_recipe(tmp_path, model, steps=4, micro=2)),
                  "--data", str(corpus), "--out", str(tmp_path / "one"))
    assert single.wait(timeout=600) == 0, single.stderr.read()
    (tmp_path / "two").mkdir()
    two_recipe = tiny_recipe(tmp_path / "two", model, steps=4, micro=1)
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", str(29500 + os.getpid() % 1000), "-m", "lh_convert.cli", "extend",
         "--recipe", str(two_recipe), "--data", str(corpus), "--out", str(tmp_path / "two" / "run")],
        capture_output=True, text=True, timeout=900)
    assert launched.returncode == 0, launched.stderr[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two" / "run")
    assert len(one) == len(two) == 4
    # Same global batch; only the order of floating-point reductions differs.
    assert all(abs(a - b) < 1e-4 for a, b in zip(one, two)), (one, two)


# ---- bad input ----------------------------------------------------------------------------------


def _extend_error(tiny_recipe, tmp_path: Path, model: Path, data: str, **recipe_kwargs) -> str:
    recipe = load_recipe(str(tiny_recipe(tmp_path, model, **recipe_kwargs)))
    with pytest.raises(LhConvertError) as caught:
        extend(recipe=recipe, out=tmp_path / "run", data=DataSpec(paths=(data,)), echo=print,
               progress=False)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_missing_data(make_tiny_checkpoint, tiny_recipe, tmp_path: Path) -> None:
    model = make_tiny_checkpoint("llama")
    message = _extend_error(tiny_recipe, tmp_path, model, str(tmp_path / "nothing"))
    assert "does not exist" in message or "not found" in message


def test_empty_data(make_tiny_checkpoint, tiny_recipe, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    (tmp_path / "empty" / "b.txt").write_text("   \n")
    model = make_tiny_checkpoint("llama")
    assert "no text" in _extend_error(tiny_recipe, tmp_path, model, str(tmp_path / "empty"))


def test_data_shorter_than_one_sequence(make_tiny_checkpoint, tiny_recipe, tmp_path: Path) -> None:
    (tmp_path / "short").mkdir()
    for name in "abc":
        (tmp_path / "short" / f"{name}.txt").write_text("a short document.")
    model = make_tiny_checkpoint("llama")
    message = _extend_error(tiny_recipe, tmp_path, model, str(tmp_path / "short"))
    assert "fewer than one sequence of 512" in message


def test_existing_run_of_another_model(make_tiny_checkpoint, tiny_recipe, corpus: Path,
                                       tmp_path: Path) -> None:
    first = load_recipe(str(tiny_recipe(tmp_path, make_tiny_checkpoint("llama"), steps=2)))
    extend(recipe=first, out=tmp_path / "run", data=DataSpec(paths=(str(corpus),)), echo=print,
           progress=False)
    (tmp_path / "other").mkdir()
    model = make_tiny_checkpoint("qwen2")
    recipe = load_recipe(str(tiny_recipe(tmp_path / "other", model, steps=2)))
    with pytest.raises(LhConvertError, match="choose a new --out"):
        extend(recipe=recipe, out=tmp_path / "run", data=DataSpec(paths=(str(corpus),)),
               echo=print, progress=False)


def test_corrupt_checkpoint_is_an_error_not_a_fresh_start(make_tiny_checkpoint, tiny_recipe,
                                                          corpus: Path, tmp_path: Path) -> None:
    model = make_tiny_checkpoint("llama")
    recipe = load_recipe(str(tiny_recipe(tmp_path, model, steps=4, every=2)))
    run = tmp_path / "run"
    extend(recipe=recipe, out=run, data=DataSpec(paths=(str(corpus),)), echo=print, progress=False)
    weights = latest_checkpoint(run) / "optimizer.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(LhConvertError, match="corrupt"):
        recover(run=run, steps=1, echo=print, progress=False)


def test_disk_full_during_save_keeps_the_previous_checkpoint(make_tiny_checkpoint, tiny_recipe,
                                                             corpus: Path, tmp_path: Path,
                                                             monkeypatch) -> None:
    from lh_convert.train import checkpoint as train_state

    model = make_tiny_checkpoint("llama")
    recipe = load_recipe(str(tiny_recipe(tmp_path, model, steps=4, every=2)))
    run = tmp_path / "run"
    real_save = train_state.save_file
    calls = {"n": 0}

    def failing_save(tensors, path, *args, **kwargs):
        calls["n"] += 1
        if "step-0000004" in str(Path(path).parent.name.replace(".", "")) or calls["n"] > 4:
            Path(path).write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(train_state, "save_file", failing_save)
    with pytest.raises(LhConvertError, match="checkpoints is full"):
        extend(recipe=recipe, out=run, data=DataSpec(paths=(str(corpus),)), echo=print,
               progress=False)
    kept = latest_checkpoint(run)
    assert kept.name == "step-0000002"
    load_checkpoint(kept)  # intact
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(make_tiny_checkpoint, tiny_recipe,
                                                           corpus: Path, tmp_path: Path,
                                                           monkeypatch) -> None:
    from lh_convert.train import loss as loss_module

    model = make_tiny_checkpoint("llama")
    recipe = load_recipe(str(tiny_recipe(tmp_path, model, steps=6, every=2)))
    real_forward = loss_module.CausalLMLoss.forward
    calls = {"n": 0}

    def poisoned(self, input_ids, late_fraction=None):
        loss, late = real_forward(self, input_ids, late_fraction)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 and late_fraction is None else loss), late

    monkeypatch.setattr(loss_module.CausalLMLoss, "forward", poisoned)
    with pytest.raises(LhConvertError, match=r"loss became nan at step 3.*last good checkpoint: step-0000002"):
        extend(recipe=recipe, out=tmp_path / "run", data=DataSpec(paths=(str(corpus),)),
               echo=print, progress=False)
    assert latest_checkpoint(tmp_path / "run").name == "step-0000002"


def test_ctrl_c_saves_and_exits(make_tiny_checkpoint, tiny_recipe, corpus: Path, tmp_path: Path,
                                monkeypatch) -> None:
    from lh_convert.train import loss as loss_module

    model = make_tiny_checkpoint("llama")
    recipe = load_recipe(str(tiny_recipe(tmp_path, model, steps=10, every=100)))
    real_forward = loss_module.CausalLMLoss.forward
    calls = {"n": 0}

    def interrupted(self, input_ids, late_fraction=None):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_forward(self, input_ids, late_fraction)

    monkeypatch.setattr(loss_module.CausalLMLoss, "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extend(recipe=recipe, out=tmp_path / "run", data=DataSpec(paths=(str(corpus),)),
               echo=print, progress=False)
    saved = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert saved.state.step == 3 and saved.state.data_step == 3  # the three finished steps


def test_plan_reports_and_flags_problems(make_tiny_checkpoint, tiny_recipe, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from lh_convert.cli import main

    model = make_tiny_checkpoint("llama")
    ok = CliRunner().invoke(main, ["plan", "--recipe", str(tiny_recipe(tmp_path, model))])
    assert ok.exit_code == 0, ok.output
    for line in ("parameters", "RoPE          theta", "S = 288 of N = 512", "memory", "time/step",
                 "NOTE          recovery has"):
        assert line in ok.output, ok.output
    bad = CliRunner().invoke(main, ["plan", "--recipe", str(tiny_recipe(tmp_path, model)),
                                    "--ctx", "513"])
    assert bad.exit_code == 2 and "PROBLEM" in bad.output and "multiple of 2" in bad.output
    dry = CliRunner().invoke(main, ["extend", "--recipe", str(tiny_recipe(tmp_path, model)),
                                    "--out", str(tmp_path / "run"), "--dry-run"])
    assert dry.exit_code == 0 and not (tmp_path / "run").exists()


def test_recovery_note_flags_short_recoveries_and_quotes_the_record(monkeypatch,
                                                                      tmp_path: Path) -> None:
    import dataclasses

    from lh_convert.train import outlook
    from lh_convert.train.recipes import Recipe, TrainSettings

    record = tmp_path / "conversion"
    record.mkdir()
    (record / "summary.json").write_text(json.dumps([
        {"study": "a", "model": "M", "init": "pretrained", "context": 65536, "note": "",
         "arms": {"dense": {"steps_s": 600.0, "val_loss": 1.30},
                  "lighthouse": {"steps_s": 300.0, "val_loss": 1.50,
                                 "dense_val_loss_at_same_wall_s": 1.40}}},
        {"study": "b", "model": "M", "init": "pretrained", "context": 65536, "note": "",
         "arms": {"lighthouse": {"steps_s": 300.0, "val_loss": 1.45,
                                 "dense_val_loss_at_same_wall_s": 1.40}}},
        {"study": "c", "model": "M", "init": "random", "context": 65536, "note": "PARTIAL",
         "arms": {"lighthouse": {"steps_s": 200.0, "val_loss": 6.49,
                                 "dense_val_loss_at_same_wall_s": 6.72}}}]))
    monkeypatch.setattr(outlook, "shipped_folder", lambda folder: record)
    short = Recipe(name="t", description="t", model="m", ctx=65536,
                   train=TrainSettings(stage1_steps=60, recovery_fraction=1 / 3))
    note = outlook.recovery_note(short)
    assert "recovery has 20 dense steps" in note
    assert "study b" in note and "0.05 nats behind dense" in note  # the smallest gap
    long = dataclasses.replace(short, init="random", train=TrainSettings(
        stage1_steps=3 * outlook.SHORT_RECOVERY_STEPS, recovery_fraction=1 / 3))
    note = outlook.recovery_note(long)
    assert "recovery has" not in note and "from scratch" in note and "partial" in note
    assert "0.23 nats ahead of dense" in note
    (record / "summary.json").unlink()
    assert outlook.recovery_note(long) is None


def test_outlook_prefers_a_complete_study_over_a_partial_one(monkeypatch, tmp_path: Path) -> None:
    from lh_convert.train import outlook
    from lh_convert.train.recipes import Recipe

    def study(name: str, steps: int, light_steps: int, gap_from: float) -> dict:
        return {"study": name, "model": "M", "init": "random", "context": 65536, "note": "",
                "steps": steps,
                "arms": {"dense": {"steps": steps, "steps_s": 400.0, "val_loss": 6.6},
                         "lighthouse": {"steps": light_steps, "steps_s": 200.0,
                                        "val_loss": gap_from,
                                        "dense_val_loss_at_same_wall_s": 6.72}}}

    record = tmp_path / "conversion"
    record.mkdir()
    (record / "summary.json").write_text(json.dumps([
        study("partial-one", 183, 120, 6.49), study("complete-one", 160, 160, 6.62)]))
    monkeypatch.setattr(outlook, "shipped_folder", lambda folder: record)
    note = outlook.expected_outcome(Recipe(name="t", description="t", model="m", ctx=65536,
                                           init="random"))
    assert "study complete-one" in note and "partial" not in note
    assert "0.10 nats ahead of dense" in note


def test_outlook_counts_an_arm_without_its_last_validation_as_partial(monkeypatch,
                                                                      tmp_path: Path) -> None:
    """An arm that trained its whole budget but lost its final validation (its loss is from an
    earlier step, `val_loss_at_steps_s`) is partial, and its time is the measured loss's."""
    from lh_convert.train import outlook
    from lh_convert.train.recipes import Recipe

    cut = {"study": "cut", "model": "M", "init": "pretrained", "context": 65536, "note": "",
           "steps": 240,
           "arms": {"dense": {"steps": 240, "steps_s": 683.0, "val_loss": 1.35},
                    "lighthouse": {"steps": 240, "steps_s": 341.0, "val_loss_at_steps_s": 285.0,
                                   "val_loss": 1.484, "dense_val_loss_at_same_wall_s": 1.4}}}
    assert not outlook.is_complete(cut)
    record = tmp_path / "conversion"
    record.mkdir()
    (record / "summary.json").write_text(json.dumps([cut]))
    monkeypatch.setattr(outlook, "shipped_folder", lambda folder: record)
    note = outlook.expected_outcome(Recipe(name="t", description="t", model="m", ctx=65536))
    assert "partial" in note and "after 285s of steps" in note


def test_outlook_quotes_the_study_that_measured_the_recipes_own_settings(monkeypatch,
                                                                        tmp_path: Path) -> None:
    """A smaller gap measured with other levers (here 13 Lighthouse layers) is not quoted for
    a recipe whose settings another study measured; without a match, the line says so."""
    import dataclasses

    from lh_convert.train import outlook
    from lh_convert.train.recipes import load_recipe

    recipe = load_recipe("smollm2-135m-64k")
    own = outlook.lever_settings(recipe)
    shallow = json.loads(json.dumps(own))
    shallow["lighthouse"]["dense_layers"] = [0, 1, *range(15, 30)]

    def study(name: str, settings: dict, light_loss: float) -> dict:
        return {"study": name, "model": "M", "init": "pretrained", "context": 65536,
                "note": "", "steps": 240, "settings": settings,
                "arms": {"dense": {"steps": 240, "steps_s": 683.0, "val_loss": 1.35},
                         "lighthouse": {"steps": 240, "steps_s": 376.0, "val_loss": light_loss,
                                        "dense_val_loss_at_same_wall_s": 1.378}}}

    record = tmp_path / "conversion"
    record.mkdir()
    (record / "summary.json").write_text(json.dumps([study("own", own, 1.449),
                                                     study("shallow", shallow, 1.40)]))
    monkeypatch.setattr(outlook, "shipped_folder", lambda folder: record)
    note = outlook.expected_outcome(recipe)
    assert "study own " in note and "these Lighthouse settings" in note
    assert "0.07 nats behind" in note
    summed = dataclasses.replace(recipe, lighthouse=dataclasses.replace(recipe.lighthouse,
                                                                        combine="sum"))
    note = outlook.expected_outcome(summed)
    assert "study shallow " in note and "other Lighthouse settings" in note


def test_outlook_prefers_a_study_at_the_recipes_context(monkeypatch, tmp_path: Path) -> None:
    """A 128K recipe is quoted the 128K study, not a smaller gap measured at 64K; a context no
    study measured gets the closest other one, with the recipe's own context named."""
    import dataclasses

    from lh_convert.train import outlook
    from lh_convert.train.recipes import load_recipe

    recipe = load_recipe("smollm2-135m-64k")
    own = outlook.lever_settings(recipe)

    def study(name: str, context: int, light_loss: float) -> dict:
        return {"study": name, "model": "M", "init": "pretrained", "context": context,
                "note": "", "steps": 120, "settings": own,
                "arms": {"dense": {"steps": 120, "steps_s": 651.0, "val_loss": 1.50},
                         "lighthouse": {"steps": 120, "steps_s": 310.0, "val_loss": light_loss,
                                        "dense_val_loss_at_same_wall_s": 1.596}}}

    record = tmp_path / "conversion"
    record.mkdir()
    (record / "summary.json").write_text(json.dumps([study("at-64k", 65536, 1.667),
                                                     study("at-128k", 131072, 1.784)]))
    monkeypatch.setattr(outlook, "shipped_folder", lambda folder: record)
    note = outlook.expected_outcome(dataclasses.replace(recipe, ctx=131072))
    assert "study at-128k " in note and "0.19 nats behind" in note and "this recipe" not in note
    note = outlook.expected_outcome(dataclasses.replace(recipe, ctx=32768))
    assert "study at-64k " in note and "(this recipe: 32,768)" in note

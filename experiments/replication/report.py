"""The `report` step of replicate.py: the packed outputs -> PNG plots and a Markdown section.

Reads what `pack` wrote (metrics.jsonl of each arm, timings, valloss.json and the eval summaries)
and writes into `out`: val_loss.png (validation loss vs training tokens, both arms, the switch
marked), train_loss.png (training loss around the switch), quality_vs_time.png (validation loss
with dense attention vs seconds of training steps), the eval plots of every model, and section.md
(tables ready for docs/results.md).
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from pathlib import Path

from lh_convert.train.metrics import read_jsonl, read_metrics

ARMS = ("dense", "lighthouse")
MODELS = ("original", "rope-only", "dense", "lighthouse")
REPEAT = "dense-repeat"  # the dense arm with seed + 1, when it was run: the run-to-run spread
STAGES = {"lighthouse": "1", "dense": "2 (recovery)"}  # the training stages' names in metrics
COLOURS = {"dense": "tab:orange", "lighthouse": "tab:blue", REPEAT: "tab:gray"}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def _arm_numbers(metrics: list[dict], stage1: int) -> dict:
    """Per stage: steps, summed step time, median tokens/s; the loss jump at the switch and the
    recovery steps (the first recovery step whose 3-step mean training loss is back at or below
    the mean of stage 1's last 3 steps)."""
    train = [r for r in metrics if r["kind"] == "train"]
    evals = [r for r in metrics if r["kind"] == "eval"]
    numbers: dict = {"stages": {}}
    for stage in ("lighthouse", "dense"):
        rows = [r for r in train if r["stage"] == stage]
        if rows:
            numbers["stages"][stage] = {
                "steps": len(rows), "seconds": sum(r["step_s"] for r in rows),
                "tokens_per_s": _median([r["tokens_per_s"] for r in rows]),
                "memory_gib": max((r.get("memory_gib") or 0) for r in rows)}
    before = [r["loss"] for r in train if r["step"] <= stage1][-3:]
    after = [r["loss"] for r in train if r["step"] > stage1]
    if before and after:
        level = sum(before) / len(before)
        numbers["jump"] = after[0] - level
        smoothed = [sum(after[max(0, i - 2):i + 1]) / len(after[max(0, i - 2):i + 1])
                    for i in range(len(after))]
        # The paper's sense: steps until the loss is back at stage 1's level after a jump up.
        # When the loss falls at the switch there is nothing to recover in that sense.
        numbers["recovery_steps"] = "n/a (fell)" if numbers["jump"] <= 0 else next(
            (i + 1 for i, v in enumerate(smoothed) if v <= level), "not within the run")
    # Recovery validates stage 1's final weights with dense attention before its first step (a
    # dense eval at step `stage1`): the jump of the operator alone. Runs from before that
    # existed give the first recovery validation instead, after some recovery steps.
    val_before = [r for r in evals if r["step"] <= stage1 and r["stage"] == "lighthouse"]
    val_after = [r for r in evals if r["step"] >= stage1 and r["stage"] == "dense"]
    if val_before and val_after:
        numbers["val_jump"] = val_after[0]["val_loss"] - val_before[-1]["val_loss"]
        numbers["val_jump_at"] = val_after[0]["step"] - stage1
    if evals:
        numbers["final_val"], numbers["final_late"] = evals[-1]["val_loss"], evals[-1]["val_late_loss"]
    return numbers


def _loss_by_time(metrics: list[dict], arm: str, *, stage1: bool = False
                  ) -> list[tuple[float, float]]:
    """(seconds of training steps so far, validation loss) at each validation with dense
    attention: every one of a dense arm, the lighthouse arm's from the switch on. With
    ``stage1``, the lighthouse arm's stage-1 validations instead (its own attention)."""
    seconds, elapsed, points = 0.0, {0: 0.0}, []
    for r in metrics:
        if r["kind"] == "train":
            seconds += r["step_s"]
            elapsed[r["step"]] = seconds
        elif (r["stage"] == "lighthouse") if stage1 else (arm != "lighthouse" or
                                                          r["stage"] == "dense"):
            points.append((elapsed.get(r["step"], seconds), r["val_loss"]))
    return points


def _time_to_reach(points: list[tuple[float, float]], loss: float) -> str:
    """When a curve of `_loss_by_time` first reaches `loss`, linear between validations."""
    if points and points[0][1] <= loss:
        return f"{points[0][0]:.0f}s or less (its first validation)"
    for (t0, l0), (t1, l1) in zip(points, points[1:]):
        if l1 <= loss:
            return f"{t0 + (t1 - t0) * (l0 - loss) / (l0 - l1):.0f}s (linear between validations)"
    return "not within its run"


def _val_jump(numbers: dict) -> str:
    """The validation-loss jump at the switch; when it was measured only after some recovery
    steps (runs that did not validate at the switch), says after how many."""
    if "val_jump" not in numbers:
        return "-"
    later = numbers["val_jump_at"]
    return f"{numbers['val_jump']:+.4f}" + (f" (after {later} recovery steps)" if later else "")


def _plot(metrics: dict[str, list[dict]], out: Path, stage1: int,
          tokens_per_step: int | None) -> list[str]:
    from lh_convert.util.figures import pyplot, save_figure

    plt = pyplot()
    written = []
    for kind, key, name, title in (("eval", "val_loss", "val_loss.png", "validation loss"),
                                   ("train", "loss", "train_loss.png", "training loss")):
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        for arm in (*ARMS, REPEAT):  # the repeat only where it was run
            rows = [r for r in metrics[arm] if r["kind"] == kind]
            if not rows:
                continue
            x = [r["step"] * tokens_per_step / 1e6 if tokens_per_step else r["step"] for r in rows]
            colour = COLOURS[arm]
            ax.plot(x, [r[key] for r in rows], "o-" if kind == "eval" else "-", ms=3, label=arm,
                    color=colour)
            if kind == "eval":
                late = [r["val_late_loss"] for r in rows]
                ax.plot(x, late, "x--", ms=3, alpha=0.6, label=f"{arm} (last quarter)",
                        color=colour)
        switch = stage1 * tokens_per_step / 1e6 if tokens_per_step else stage1
        ax.axvline(switch, color="grey", ls=":", label="lighthouse -> dense recovery")
        ax.set(xlabel="training tokens (millions)" if tokens_per_step else "step",
               ylabel="loss (nats/token)", title=f"{title} (stage 1 of the lighthouse arm: with Lighthouse attention)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, out / name, dpi=120)
        written.append(name)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for arm in (*ARMS, REPEAT):
        points = _loss_by_time(metrics[arm], arm)
        if points:
            ax.plot(*zip(*points), "o-", ms=3, label=arm, color=COLOURS[arm])
    stage1 = _loss_by_time(metrics["lighthouse"], "lighthouse", stage1=True)
    if stage1:
        ax.plot(*zip(*stage1), "x--", ms=3, alpha=0.5, color=COLOURS["lighthouse"],
                label="lighthouse, stage 1 (validated with Lighthouse attention)")
    ax.set(xlabel="training-step time (s; conversion, loading and validation left out)",
           ylabel="validation loss (dense attention unless marked)",
           title="quality against time: where each arm is after the same seconds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, out / "quality_vs_time.png", dpi=120)
    return [*written, "quality_vs_time.png"]


def _outcome(timing: dict, later: list[dict]) -> str:
    """How a command ended, for the list of commands: nothing when it succeeded; "interrupted"
    when it was stopped by SIGINT (exit 130: `timeout -s INT` at a device call's end) and the
    same command ran again later (it resumes from the checkpoint saved on the interrupt)."""
    if not timing.get("exit"):
        return ""
    if timing["exit"] == 130 and any(t["command"] == timing["command"] for t in later):
        return " (interrupted at the call's time limit; the next run of it resumed)"
    return f" (failed, exit {timing['exit']})"


def split_archive(argument: str) -> tuple[Path, tuple[str, ...] | None]:
    """`PATH` (the whole archive) or `PATH#ARM,ARM` (only those arms' records)."""
    path, _, arms = argument.partition("#")
    return Path(path), tuple(a for a in arms.split(",") if a) or None


def _belongs(relative: Path, arms: tuple[str, ...]) -> bool:
    """Whether a packed file is one of `arms`' records: its run, eval, recipe or log."""
    parts = relative.parts
    return parts[0] == "corpus" or any(
        parts[:2] in (("runs", arm), ("eval", arm), ("recipes", f"{arm}.toml"),
                      ("logs", f"{arm}.log")) for arm in arms)


def _arm_timings(text: str, arms: tuple[str, ...]) -> str:
    """The timings rows of `arms`' commands: their training, and the evaluation of each."""
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return "".join(json.dumps(row) + "\n" for row in rows if row["step"] in arms or any(
        f"--model {arm} " in row["command"] + " " for arm in arms))


def merge_archives(archives: list[Path | str], root: Path) -> None:
    """Unpack `archives` into `root` in order: a later archive's file replaces an earlier one's,
    except the logs (`*.log`, `*.jsonl` outside runs/), whose lines are appended once each, so
    calls that did not share .rep (each packing what it has) add up to one record. An archive
    given as `PATH#ARM,ARM` adds only those arms' records (runs, evals, recipes, logs and
    timings): an arm of an earlier session beside the arms of a later one."""
    for index, argument in enumerate(archives):
        archive, arms = split_archive(str(argument))
        part = root.parent / f"{root.name}.part{index}"
        with tarfile.open(archive) as tar:
            tar.extractall(part, filter="data")
        if arms is not None:
            for path in [p for p in part.rglob("*") if p.is_file()]:
                relative = path.relative_to(part)
                if relative == Path("timings.jsonl"):
                    path.write_text(_arm_timings(path.read_text(), arms))
                elif not _belongs(relative, arms):
                    path.unlink()
        for path in sorted(p for p in part.rglob("*") if p.is_file()):
            target = root / path.relative_to(part)
            target.parent.mkdir(parents=True, exist_ok=True)
            appended = path.suffix == ".log" or (path.suffix == ".jsonl" and
                                                 path.relative_to(part).parts[0] != "runs")
            if appended and target.is_file():
                known = set(target.read_text().splitlines())
                new = [line for line in path.read_text().splitlines() if line not in known]
                with target.open("a") as handle:
                    handle.writelines(line + "\n" for line in new)
            else:
                shutil.copyfile(path, target)
        shutil.rmtree(part)


def write_report(*, archives: list[Path | str], out: Path, stage1: int,
                 summary: Path | None = None, study: dict | None = None) -> None:
    """Merge `archives`, write the plots and section.md into `out`. `stage1`: the stage-1
    steps of the budget, where the lighthouse arm's recorded recipe does not say. With
    `summary`, also put this study's entry (`study_summary`, `study` naming it) into that
    JSON list, replacing an entry of the same name."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "merged"
        merge_archives(archives, root)
        recipe = json.loads((root / "runs" / "lighthouse" / "recipe.json").read_text()) \
            if (root / "runs" / "lighthouse" / "recipe.json").is_file() else None
        # Each arm's training log, read once (empty where the arm was not run).
        metrics = {arm: read_metrics(root / "runs" / arm) for arm in (*ARMS, REPEAT)}
        first = [r for arm in ARMS for r in metrics[arm] if r["kind"] == "train"]
        tokens_per_step = first[0]["tokens"] // first[0]["step"] if first else None
        if recipe is not None:
            stage1 = recipe["recipe"]["train"]["stage1_steps"]
        plots = _plot(metrics, out, stage1, tokens_per_step)
        for model in (*MODELS, REPEAT):
            for png in sorted((root / "eval" / model).glob("*.png")):
                shutil.copyfile(png, out / f"{model}-{png.name}")
                plots.append(f"{model}-{png.name}")
        lines = _markdown(root, metrics, stage1=stage1, tokens_per_step=tokens_per_step,
                          plots=plots, out=out)
        timings = read_jsonl(root / "timings.jsonl")
    (out / "section.md").write_text("\n".join(lines) + "\n")
    if summary is not None:
        entry = {**(study or {}), **study_summary(metrics, timings,
                                                   tokens_per_step=tokens_per_step)}
        if recipe is not None:  # what `plan` and `extend` match a user's recipe on
            entry["settings"] = recorded_settings(recipe)
        known = json.loads(summary.read_text()) if summary.is_file() else []
        known = [e for e in known if e.get("study") != entry.get("study")] + [entry]
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(json.dumps(known, indent=1) + "\n")
        print(f"report: {summary} holds {len(known)} studies")
    print(f"report: {out / 'section.md'} and {len(plots)} plots in {out}")


def recorded_settings(recipe_json: dict) -> dict:
    """The Lighthouse arm's levers (`outlook.LEVER_FIELDS`) from its run's recipe.json, with
    lh-convert's defaults where an older run did not write a field."""
    from lh_convert.train.outlook import lever_settings
    from lh_convert.train.recipes import parse_recipe

    return lever_settings(parse_recipe(recipe_json["recipe"], where="recipe.json"))


def _arm_label(study: str) -> str:
    """A study's name without its budget's prefix, for a plot's label."""
    names = {"replication-240": "sum", "convert-128k-120": "finest-rewarm"}
    for prefix in ("convert-240-", "convert-128k-120-"):
        study = study.removeprefix(prefix)
    return names.get(study, study)


def write_frontier(*, summary: Path, dense_archive: Path | str, out: Path) -> list[dict]:
    """Every Lighthouse arm recorded in `summary` against one dense arm (the studies whose dense
    arm is `dense_archive`'s, by its training-step seconds): `frontier.png` (the dense curve,
    each arm where its loss was measured, the Pareto frontier of the Lighthouse arms) and
    `frontier.md` (the same as a table). Returns the table's rows."""
    from lh_convert.train.outlook import is_complete
    from lh_convert.util.figures import pyplot, save_figure

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "merged"
        merge_archives([dense_archive], root)
        dense = read_metrics(root / "runs" / "dense")
    curve = _loss_by_time(dense, "dense")
    total = round(sum(r["step_s"] for r in dense if r["kind"] == "train"), 1)
    rows = []
    for study in json.loads(summary.read_text()):
        light, base = study["arms"].get("lighthouse"), study["arms"].get("dense", {})
        if not light or base.get("steps_s") != total or light.get("val_loss") is None:
            continue
        at = light.get("val_loss_at_steps_s", light["steps_s"])
        rows.append({"study": study["study"], "steps_s": at, "share": at / total,
                     "val_loss": light["val_loss"], "dense_at_same_s": _interpolate(curve, at),
                     "complete": is_complete(study)})
    for row in rows:
        row["gap"] = row["val_loss"] - row["dense_at_same_s"]
        row["frontier"] = not any(other is not row and other["steps_s"] <= row["steps_s"]
                                  and other["val_loss"] <= row["val_loss"] for other in rows)
    rows.sort(key=lambda row: row["steps_s"])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    ax.plot(*zip(*curve), "o-", ms=3, color=COLOURS["dense"], label="dense (its validations)")
    for index, row in enumerate(rows):
        ax.plot(row["steps_s"], row["val_loss"], "o" if row["complete"] else "s", ms=6,
                color=COLOURS["lighthouse"], alpha=1.0 if row["frontier"] else 0.5)
        ax.annotate(_arm_label(row["study"]) + ("" if row["complete"] else " (partial)"),
                    (row["steps_s"], row["val_loss"]), textcoords="offset points",
                    xytext=(5, 4 if index % 2 else -11), fontsize=7)  # neighbours apart
    edge = [row for row in rows if row["frontier"]]
    ax.plot([r["steps_s"] for r in edge], [r["val_loss"] for r in edge], "--",
            color=COLOURS["lighthouse"], label="Lighthouse + recovery: Pareto frontier")
    ax.set(xlabel="training-step time (s)", ylabel="final validation loss (dense attention)",
           title="every measured arm against dense training at the same seconds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out / "frontier.png", dpi=120)
    lines = [f"Dense arm: {total:.0f}s of training steps, final {curve[-1][1]:.3f}.", "",
             "| study | step-seconds | share of dense's | val loss | dense at the same seconds "
             "| gap | on the frontier |", "|---|---|---|---|---|---|---|"]
    lines += [f"| `{r['study']}`{'' if r['complete'] else ' (partial)'} | {r['steps_s']:.0f} "
              f"| {r['share']:.2f} | {r['val_loss']:.3f} | {r['dense_at_same_s']:.3f} "
              f"| {r['gap']:+.3f} | {'yes' if r['frontier'] else '-'} |" for r in rows]
    (out / "frontier.md").write_text("\n".join(lines) + "\n")
    print(f"frontier: {len(rows)} Lighthouse arms against {dense_archive}: "
          f"{out / 'frontier.png'}, {out / 'frontier.md'}")
    return rows


def _interpolate(points: list[tuple[float, float]], at: float) -> float | None:
    """A curve of `_loss_by_time` read at `at` seconds, linear between validations (None
    outside the measured span)."""
    for (t0, l0), (t1, l1) in zip(points, points[1:]):
        if t0 <= at <= t1:
            return l0 + (l1 - l0) * (at - t0) / (t1 - t0) if t1 > t0 else l1
    return None


def study_summary(metrics: dict[str, list[dict]], timings: list[dict], *,
                  tokens_per_step: int | None) -> dict:
    """A study's arms as docs/conversion/summary.json records them: wall time (the arm's
    commands, loading and validation included), training-step seconds, the final validation
    loss with dense attention, and for a Lighthouse arm the dense arm's validation loss at
    the same training-step seconds (its curve interpolated: `dense_val_loss_at_same_wall_s`)."""
    arms, steps = {}, 0
    dense_curve = _loss_by_time(metrics["dense"], "dense")
    for arm in (*ARMS, REPEAT):
        train = [r for r in metrics[arm] if r["kind"] == "train"]
        if not train:
            continue
        curve = _loss_by_time(metrics[arm], arm)
        steps_s = sum(r["step_s"] for r in train)
        steps = max(steps, train[-1]["step"])
        record = {"wall_s": round(sum(t["seconds"] for t in timings if t["step"] == arm), 1),
                  "steps_s": round(steps_s, 1), "steps": train[-1]["step"],
                  "val_loss": curve[-1][1] if curve else None}
        if arm == "lighthouse":
            # An arm cut off between its last validation and its last step (seen 2026-12-04)
            # is compared where its loss was measured, not where its training stopped.
            measured_at = curve[-1][0] if curve else steps_s
            if curve and measured_at < steps_s - 1e-6:
                record["val_loss_at_steps_s"] = round(measured_at, 1)
            record["dense_val_loss_at_same_wall_s"] = _interpolate(dense_curve, measured_at)
            stage1 = _loss_by_time(metrics[arm], arm, stage1=True)
            record["stage1_val_loss"] = stage1[-1][1] if stage1 else None
        arms[arm] = record
    spread = None
    if arms.get(REPEAT, {}).get("val_loss") is not None and arms.get("dense", {}).get("val_loss"):
        spread = abs(arms[REPEAT]["val_loss"] - arms["dense"]["val_loss"])
    return {"steps": steps, "tokens_per_arm": steps * tokens_per_step if tokens_per_step else None,
            "spread": spread, "arms": arms}


def _paired_gaps(metrics: dict[str, list[dict]], arms: list[str], stage1: int) -> list[str]:
    """Training loss minus the dense arm's at the same step, averaged over spans of steps.
    Every arm reads the same batches in the same order, so step for step this is a paired
    comparison: the gap at the end of recovery is what the switch has not yet won back."""
    loss = {arm: {r["step"]: r["loss"] for r in metrics[arm] if r["kind"] == "train"}
            for arm in arms}
    if not loss.get("dense") or len(loss) < 2:
        return []
    last = max(loss["dense"])
    chunk = max(1, (last - stage1) // 4)
    spans = [(1, stage1)] if stage1 <= 20 else [(1, 10), (stage1 - 9, stage1)]
    spans += [(start, min(start + chunk - 1, last)) for start in range(stage1 + 1, last + 1, chunk)]
    lines = ["", "Training loss minus the dense arm's on the same batches (mean over the steps; "
             "the seed + 1 repeat reads other batches, so its row is the noise of this "
             "comparison):", "",
             "| arm | " + " | ".join(f"steps {a}-{b}" for a, b in spans) + " |",
             "|---|" + "---|" * len(spans)]
    for arm in (a for a in arms if a != "dense"):
        cells = []
        for a, b in spans:
            gaps = [loss[arm][s] - loss["dense"][s] for s in range(a, b + 1)
                    if s in loss[arm] and s in loss["dense"]]
            cells.append(f"{sum(gaps) / len(gaps):+.3f}" if gaps else "-")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def _markdown(root: Path, metrics: dict[str, list[dict]], *, stage1: int,
              tokens_per_step: int | None, plots: list[str], out: Path) -> list[str]:
    timings = read_jsonl(root / "timings.jsonl")
    lines = ["### Training (same seed, data order, schedule and token budget)", "",
             "| arm | stage | attention | steps | tokens | step time (s) | median tokens/s | "
             "peak GiB |", "|---|---|---|---|---|---|---|---|"]
    arms = [*ARMS, REPEAT] if (root / "runs" / REPEAT / "metrics.jsonl").is_file() else list(ARMS)
    numbers = {arm: _arm_numbers(metrics[arm], stage1) for arm in arms}
    for arm in arms:
        for stage, s in numbers[arm]["stages"].items():
            tokens = s["steps"] * tokens_per_step if tokens_per_step else 0
            attention = "Lighthouse" if arm == "lighthouse" and stage == "lighthouse" else "dense"
            lines.append(f"| {arm} | {STAGES[stage]} | {attention} | {s['steps']} | "
                         f"{tokens / 1e6:.2f}M | "
                         f"{s['seconds']:.0f} | {s['tokens_per_s']:,.0f} | {s['memory_gib']:.1f} |")
    walls = {arm: sum(t["seconds"] for t in timings if t["step"] == arm) for arm in ARMS}
    steps = {arm: sum(s["seconds"] for s in numbers[arm]["stages"].values()) for arm in arms}
    if all(walls.values()):
        lines += ["", f"Wall time of each arm's commands (conversion, loading, validation and "
                  f"checkpoints included): dense {walls['dense']:.0f}s, lighthouse "
                  f"{walls['lighthouse']:.0f}s ({walls['lighthouse'] / walls['dense']:.2f}x); "
                  f"training steps alone: dense {steps['dense']:.0f}s, lighthouse "
                  f"{steps['lighthouse']:.0f}s ({steps['lighthouse'] / max(steps['dense'], 1e-9):.2f}x)."]
        repeat = sum(t["seconds"] for t in timings if t["step"] == REPEAT)
        if repeat and REPEAT in numbers:
            lines[-1] += (f" The dense arm's repeat: {repeat:.0f}s of commands, "
                          f"{steps[REPEAT]:.0f}s of steps (lighthouse "
                          f"{walls['lighthouse'] / repeat:.2f}x of it).")
    lines += ["", "Validation during stage 1 runs the stage's own attention (Lighthouse in the "
              "lighthouse arm); after the switch, and in every later table, it is dense.",
              "", "| arm | final val loss | final val loss, last quarter | train-loss jump at the "
              "switch | val-loss jump | recovery steps |", "|---|---|---|---|---|---|"]
    for arm in arms:
        n = numbers[arm]
        # The dense arms' recipes keep every layer dense: nothing switches, so no jump to show.
        jumps = (f"{n.get('jump', float('nan')):+.4f} | {_val_jump(n)} | "
                 f"{n.get('recovery_steps', '-')}") if arm == "lighthouse" else "- | - | -"
        lines.append(f"| {arm} | {n.get('final_val', float('nan')):.4f} | "
                     f"{n.get('final_late', float('nan')):.4f} | {jumps} |")
    if REPEAT in numbers and "final_val" in numbers[REPEAT] and "final_val" in numbers["dense"]:
        spread = abs(numbers[REPEAT]["final_val"] - numbers["dense"]["final_val"])
        lines += ["", f"Run-to-run spread: the dense arm run twice (`--seed` and `--seed` + 1, "
                  f"another data order) ends {spread:.4f} apart in final validation loss."]
    curves = {arm: _loss_by_time(metrics[arm], arm) for arm in ARMS}
    if "final_val" in numbers["lighthouse"] and curves["dense"] and curves["lighthouse"]:
        target = numbers["lighthouse"]["final_val"]
        lines += ["", f"Time to the lighthouse arm's final validation loss ({target:.4f}): "
                  f"lighthouse {curves['lighthouse'][-1][0]:.0f}s of training steps, dense "
                  f"{_time_to_reach(curves['dense'], target)} (`quality_vs_time.png`)."]
    lines += _paired_gaps(metrics, arms, stage1)
    lines += ["", "### Validation loss by length (first L positions of each window; mean ± "
              "standard error over windows; last quarter of those L positions after the slash)", ""]
    valloss = {m: json.loads((root / "eval" / m / "valloss.json").read_text())
               for m in (*MODELS, REPEAT) if (root / "eval" / m / "valloss.json").is_file()}
    lengths = sorted({int(n) for v in valloss.values() for n in v["lengths"]})
    if valloss:
        lines += ["| model | " + " | ".join(f"{n:,}" for n in lengths) + " |",
                  "|---|" + "---|" * len(lengths)]
        for model, v in valloss.items():
            cells = [f"{v['lengths'][str(n)]['loss']:.3f} ± {v['lengths'][str(n)]['loss_sem']:.3f}"
                     f" / {v['lengths'][str(n)]['late_loss']:.3f}" if str(n) in v["lengths"]
                     else "beyond context" for n in lengths]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    summaries = {m: json.loads((root / "eval" / m / "summary.json").read_text())["models"][0]
                 for m in (*MODELS, REPEAT) if (root / "eval" / m / "summary.json").is_file()}
    if summaries:
        lines += ["", "### Retrieval accuracy by length (lh-convert eval; mean over depths)", "",
                  "| task | length | " + " | ".join(summaries) + " |",
                  "|---|---|" + "---|" * len(summaries)]
        tasks = sorted({t for s in summaries.values() for t in s["retrieval"]} |
                       {t for s in summaries.values() for t, k in s["skipped"].items()
                        if k and t != "lh_position_loss"})
        for task in tasks:
            found = sorted({c["length"] for s in summaries.values()
                            for c in s["retrieval"].get(task, [])} |
                           {int(n) for s in summaries.values() for n in s["skipped"].get(task, {})})
            for length in found:
                cells = []
                for s in summaries.values():
                    accs = [c["acc"] for c in s["retrieval"].get(task, []) if c["length"] == length]
                    cells.append(f"{sum(accs) / len(accs):.2f}" if accs else "skipped")
                lines.append(f"| {task} | {length:,} | " + " | ".join(cells) + " |")
        lines += ["", "### Held-out loss by position bucket (lh-convert eval, whole document "
                  "before each bucket)", "", "| positions | " + " | ".join(summaries) + " |",
                  "|---|" + "---|" * len(summaries)]
        buckets = sorted({(b["start"], b["end"]) for s in summaries.values()
                          for b in s["position_loss"]})
        for start, end in buckets:
            cells = [next((f"{b['nll_per_token']:.3f} ({b['documents']})" for b in s["position_loss"]
                           if (b["start"], b["end"]) == (start, end)), "-")
                     for s in summaries.values()]
            lines.append(f"| {start:,}-{end:,} | " + " | ".join(cells) + " |")
    lines += ["", "### Commands and their wall times", ""]
    lines += [f"- `{t['command']}`: {t['seconds']:.0f}s" + _outcome(t, timings[i + 1:])
              for i, t in enumerate(timings)]
    lines += ["", "Plots: " + ", ".join(f"![{p}]({out.as_posix()}/{p})" for p in plots)]
    return lines

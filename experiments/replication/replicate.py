"""Issue #6: SmolLM2-135M-Instruct from 8K to 64K on one GPU, dense vs Lighthouse, one driver.

Steps (each one device call or less; see README.md beside this file):

  here:    prepare   corpus token folder, GGUF split in two parts, wheels for the GPU machine
  device:  stage-a   install the wheels into .rep/site, import check
           join      GGUF part 1 + part 2 -> the alias cache (sha256 checked), unpack the corpus
           dense     arm 1: continued pre-training at 64K, dense SDPA in every layer, whole budget
           lighthouse  arm 2: stage 1 with Lighthouse (--lighthouse-fraction), then dense recovery
           eval      original 8K model, rope-only (no training), dense, lighthouse: validation
                     loss by length from the token folder, and `lh-convert eval`'s long-context suite
           settings-probe  the converted model, untrained, under each layer set / rule / top-k
                     (settings_probe.py)
           pack      the small outputs into one .tar.gz under $OUT
           save, restore  .rep to and from /tmp (the machine keeps /tmp between calls, not .rep)
  here:    report    unpack it into plots and a Markdown section for docs/results.md

Both arms run the same two commands (`lh-convert extend`, then `lh-convert recover`) on the same
recipe, seed, data order and learning-rate schedule; the dense arm's recipe lists every layer
in `dense_layers`, so its "stage 1" is dense SDPA too and its switch changes nothing.
Everything lives under `.rep/` (ignored by git); `save` and `restore` carry it over from one
device call to the next through /tmp, which the warm machine keeps.
`--rehearsal` runs the same steps at CPU scale (512 context, 2 steps) under `.rep/rehearsal/`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REP = REPO / ".rep"
KEEP = Path(os.environ.get("LH_REPLICATION_KEEP", "/tmp/lh-replication"))  # see step_save
MODEL = "smollm2-135m-gguf"
MODELS = ("original", "rope-only", "dense", "lighthouse")
# The dense arm again with seed + 1 (another data order): the run-to-run spread of the result.
REPEAT = "dense-repeat"


def alias_gguf(cache: Path) -> Path:
    """Where `fetch_wheel_model` looks for the alias's GGUF under the lh-convert cache `cache`."""
    entry = json.loads((REPO / "lh_convert" / "convert" / "aliases.json").read_text())[MODEL]
    return cache / "wheel-models" / entry["sha256"][:16] / Path(entry["member"]).name


class Layout:
    """The folders of one replication (the real one, or the rehearsal)."""

    def __init__(self, args: argparse.Namespace) -> None:
        base = REP / "rehearsal" if args.rehearsal else REP
        self.root = base / args.study if args.study else base
        self.runs, self.eval, self.logs = (self.root / n for n in ("runs", "eval", "logs"))
        self.recipes = self.root / "recipes"
        self.corpus = REP / "corpus"  # one token folder serves both
        self.site, self.cache = REP / "site", REP / "cache"
        # SmolLM2's config and tokenizer without weights (from the GGUF): the source of a
        # randomly initialised model (--init random), which needs nothing else of the GGUF.
        # It travels as .rep/c/config.tar.xz (the tokenizer is 3.4 MiB raw, 0.4 MiB in xz).
        self.config_only = REP / "config"

    def env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), str(self.site),
                                              os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        if alias_gguf(self.cache).is_file():  # on the GPU machine, after `join`
            env["LH_CONVERT_CACHE"] = str(self.cache)
        return env


def run(layout: Layout, step: str, command: list[str]) -> float:
    """Run `command`, echo and log its output (logs/<step>.log), record its wall time."""
    layout.logs.mkdir(parents=True, exist_ok=True)
    shown = " ".join(command).replace(sys.executable, "python3")
    print(f"$ {shown}", flush=True)
    started = time.perf_counter()
    with open(layout.logs / f"{step}.log", "a", encoding="utf-8") as log:
        log.write(f"$ {shown}\n")
        process = subprocess.Popen(command, cwd=REPO, env=layout.env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace")
        code = None
        try:
            code = _wait_through_interrupts(process, log, step)
        finally:  # the wall time is kept even when the driver itself is stopped
            seconds = time.perf_counter() - started
            with open(layout.root / "timings.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, "command": shown,
                                         "seconds": round(seconds, 2),
                                         "exit": code if code is not None else "stopped"})
                             + "\n")
    if code != 0:
        sys.exit(f"{step}: `{shown}` failed with exit status {code} after {seconds:.0f}s")
    return seconds


def _wait_through_interrupts(process: subprocess.Popen, log, step: str) -> int:
    """Echo the command's output until it exits; return its exit status. `timeout -s INT` (or
    Ctrl-C) signals the whole process group: lh-convert saves a checkpoint and exits, so an
    interrupt here (a second one too) keeps its output flowing until it has, and the next call
    resumes."""
    interrupted = False
    while True:
        try:
            _echo_lines(process, log)
            return process.wait()
        except KeyboardInterrupt:
            if not interrupted:
                print(f"\n{step}: interrupted; waiting for the command to save and exit",
                      flush=True)
            interrupted = True


def _echo_lines(process: subprocess.Popen, log) -> None:
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        log.write(line)


def cli(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "lh_convert.cli", *arguments]


# ---- here: the corpus, the GGUF parts, the wheels ----------------------------------------------

# The device tool copies the repository's tree and a call's carried paths, 64 MiB in all.
DEVICE_CALL_MIB = 64
# The wheels the image lacks, installed for the device's Python (`pack_site`), carried by call 1.
SITE_ARCHIVE = REPO / ".whl" / "site.tar.xz"


def carried_archive(folder: Path) -> Path:
    """Where `folder` (.rep/corpus, .rep/config) travels to the arm calls as an xz tar."""
    return REP / "c" / f"{folder.name}.tar.xz"


def step_prepare(layout: Layout, args: argparse.Namespace) -> None:
    """Build .rep/corpus (+ .rep/c/corpus.tar.xz), .rep/config (config and tokenizer only, +
    .rep/c/config.tar.xz), .rep/a and .rep/b (the GGUF, split so that both calls fit the
    device's limit) and .whl/site.tar.xz (the wheels, installed); exits non-zero when a call
    would not fit."""
    from lh_convert.train.data import DataSpec, save_token_corpus, tokenize_corpus
    from lh_convert.convert.sources import load_config, load_tokenizer, resolve_source
    from lh_convert.util.paths import cache_dir

    from corpus import build_sources  # experiments/replication/corpus.py

    resolve_source(MODEL)  # fetches the GGUF into the cache when it is not there
    gguf = alias_gguf(cache_dir())
    if not layout.corpus.exists():
        sources = REP / "corpus-src"
        shutil.rmtree(sources, ignore_errors=True)
        groups = build_sources(sources)
        tokenizer = load_tokenizer(resolve_source(MODEL))
        corpus = tokenize_corpus(spec=DataSpec(paths=(str(sources),)), tokenizer=tokenizer,
                                 cache_dir=cache_dir() / "tokens")
        save_token_corpus(corpus, out=layout.corpus)
        meta = json.loads((layout.corpus / "meta.json").read_text())
        (layout.corpus / "composition.json").write_text(json.dumps(
            {"groups": groups, "num_tokens": meta["num_tokens"],
             "num_documents": meta["num_documents"],
             "validation_sources": meta["validation_sources"]}, indent=1))
    if not (layout.config_only / "config.json").is_file():
        source = resolve_source(MODEL)
        staging = layout.config_only.with_name(layout.config_only.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        load_config(source).save_pretrained(staging)
        load_tokenizer(source).save_pretrained(staging)
        staging.rename(layout.config_only)
    shutil.rmtree(REP / "c" / "smollm2-135m-config", ignore_errors=True)  # before 2026-12-06
    for folder in (layout.corpus, layout.config_only):
        xz_archive(folder, carried_archive(folder))
    if args.wheels:
        downloads = REP / "wheels"
        downloads.mkdir(exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                        *DEVICE_PLATFORM, "-d", str(downloads), *DEVICE_WHEELS], check=True)
        for stale in (REPO / ".whl").glob("*.whl"):  # carried as wheels before 2026-12-06
            stale.unlink()
        pack_site(sorted(downloads.glob("*.whl")), SITE_ARCHIVE)
    data = gguf.read_bytes()
    carried = {call: sum(p.stat().st_size for p in paths if p.is_file())
               for call, paths in (("call1", [SITE_ARCHIVE]),
                                   ("arm", [carried_archive(layout.corpus),
                                            carried_archive(layout.config_only)]))}
    first = split_point(len(data), carried["call1"], carried["arm"])
    for folder, part in (("a", data[:first]), ("b", data[first:])):
        (REP / folder).mkdir(exist_ok=True)
        (REP / folder / f"gguf.part{'1' if folder == 'a' else '2'}").write_bytes(part)
    (REP / "b" / "gguf.sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")
    for path in sorted([*REP.glob("[abc]/*"), *(REPO / ".whl").glob("*")]):
        if path.is_file():
            print(f"{path.stat().st_size / 2**20:8.2f} MiB  {path.relative_to(REPO)}")
    tree = tree_bytes(REPO)
    calls = {"call1 (.rep/a .whl)": tree + first + carried["call1"],
             "arm (.rep/b .rep/c)": tree + len(data) - first + carried["arm"]}
    for call, size in calls.items():
        print(f"{size / 2**20:8.2f} MiB  {call}, with the repository's tree "
              f"({tree / 2**20:.2f} MiB), of the device's {DEVICE_CALL_MIB} MiB")
    over = [call for call, size in calls.items() if size > DEVICE_CALL_MIB * 2**20]
    if over:
        sys.exit(f"prepare: {', '.join(over)} would exceed the device's {DEVICE_CALL_MIB} MiB "
                 f"per call; shrink the tracked tree ({tree / 2**20:.1f} MiB: `git ls-files` "
                 f"sizes) or stage the GGUF over one more call")


def xz_archive(folder: Path, archive: Path) -> None:
    """`folder` as an xz tar named after it, written under a temporary name (kept if there)."""
    if archive.exists():
        return
    archive.parent.mkdir(parents=True, exist_ok=True)
    scratch = archive.with_name(archive.name + ".tmp")
    with tarfile.open(scratch, "w:xz", preset=9) as tar:
        tar.add(folder, arcname=folder.name)
    scratch.rename(archive)


def split_point(total: int, call1_rest: int, arm_rest: int) -> int:
    """Where the GGUF's bytes are split so that call 1 (part 1 + the wheels) and the arm call
    (part 2 + the corpus and config) carry the same amount."""
    return min(max((total + arm_rest - call1_rest) // 2, 1), total - 1)


def tree_bytes(repo: Path) -> int:
    """The bytes a device call copies besides what it carries: tracked files and untracked
    ones git does not ignore."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], cwd=repo, capture_output=True,
                           check=True).stdout.decode().split("\0")
    return sum((repo / name).stat().st_size for name in names
               if name and (repo / name).is_file() and not (repo / name).is_symlink())


def pack_site(wheels: list[Path], archive: Path) -> None:
    """The wheels installed into a folder (for the device's Python 3.12), as one xz tar: a
    third of their size (lm-eval's wheel is 9 MiB, its installed files 3 MiB in xz)."""
    staging = archive.with_name("site.staging")
    shutil.rmtree(staging, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--no-compile", "--no-cache-dir", *DEVICE_PLATFORM, "--target",
                    str(staging), *map(str, wheels)], check=True)
    archive.unlink(missing_ok=True)
    xz_archive(staging, archive)
    shutil.rmtree(staging)


# What the GPU image lacks for `lh-convert eval` (lm-eval, reading JSONL through datasets) and
# for reading the GGUF; everything else those import is in the image (KINDS.md's list).
DEVICE_WHEELS = ("lm_eval==0.4.13", "datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19",
                 "gguf==0.19.0")
DEVICE_PLATFORM = ("--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                   *(f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
                                                 "manylinux2014_x86_64")))


# ---- device: the wheels, the GGUF, the corpus --------------------------------------------------


def link_kernels(layout: Layout) -> None:
    """kernels/ as the package lighthouse_kernels on the steps' PYTHONPATH (.rep/site): the GPU
    machine runs lh-convert from the repository, not from an install."""
    link = layout.site / "lighthouse_kernels"
    layout.site.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(REPO / "kernels", target_is_directory=True)


def step_stage_a(layout: Layout, args: argparse.Namespace) -> None:
    """Unpack the installed wheels (carried in .whl/site.tar.xz) into .rep/site; `save` then
    keeps them and GGUF part 1 (carried in .rep/a) for the next call."""
    if SITE_ARCHIVE.is_file() and not args.rehearsal:  # a rehearsal uses this Python's packages
        unpack_site(SITE_ARCHIVE, layout.site)
    link_kernels(layout)
    check = ("import torch, transformers, datasets, lm_eval, gguf, lighthouse_kernels, "
             "lh_convert.evaluate.runner; print('torch', torch.__version__, 'transformers', "
             "transformers.__version__, 'datasets', datasets.__version__, 'lm_eval', "
             "lm_eval.__version__, 'cuda', torch.cuda.is_available() and "
             "torch.cuda.get_device_name())")
    run(layout, "stage-a", [sys.executable, "-c", check])


def unpack_site(archive: Path, site: Path) -> None:
    """What `pack_site` packed, into `site` (files already there are replaced)."""
    site.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = Path(member.name)
            if name.parts[:1] != ("site.staging",) or len(name.parts) < 2:
                continue
            member.name = str(Path(*name.parts[1:]))
            tar.extract(member, site, filter="data")


def step_unpack(layout: Layout, args: argparse.Namespace) -> None:
    """Unpack the corpus (carried in .rep/c) and link the kernels: all that training a randomly
    initialised model needs besides the config-only folder (also in .rep/c; no wheels, no GGUF)."""
    link_kernels(layout)
    if not (layout.corpus / "meta.json").is_file():  # the corpus is needed: no archive fails
        with tarfile.open(carried_archive(layout.corpus)) as tar:
            tar.extractall(REP, filter="data")
    config = carried_archive(layout.config_only)  # only --init random reads it
    if not (layout.config_only / "config.json").is_file() and config.is_file():
        with tarfile.open(config) as tar:
            tar.extractall(REP, filter="data")
    meta = json.loads((layout.corpus / "meta.json").read_text())
    print(f"corpus: {meta['num_tokens'][0]:,} training and {meta['num_tokens'][1]:,} validation "
          f"tokens in {layout.corpus}")


def step_join(layout: Layout, args: argparse.Namespace) -> None:
    """Join the GGUF parts into the alias cache (sha256 checked) and unpack the corpus."""
    target = alias_gguf(layout.cache)
    if not target.is_file():
        first = REP / "a" / "gguf.part1"
        if not first.is_file():
            sys.exit("join: GGUF part 1 is missing; carry .rep/a to `stage-a save`, then "
                     "`restore` before `join`")
        data = first.read_bytes() + (REP / "b" / "gguf.part2").read_bytes()
        expected = (REP / "b" / "gguf.sha256").read_text().split()[0]
        if hashlib.sha256(data).hexdigest() != expected:
            sys.exit(f"join: the joined GGUF's sha256 is not {expected}; carry the parts again")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        print(f"joined {target} ({len(data):,} bytes, sha256 {expected[:16]}... ok)")
    step_unpack(layout, args)


# ---- device: the arms --------------------------------------------------------------------------


def budget(args: argparse.Namespace) -> tuple[int, int]:
    """(stage-1 steps, recovery steps) of the budget `--steps` split by `--lighthouse-fraction`."""
    stage1 = max(1, min(args.steps - 1, round(args.steps * args.lighthouse_fraction)))
    return stage1, args.steps - stage1


def rope(args: argparse.Namespace) -> str:
    """theta (the NTK-aware base increase); none in a rehearsal, whose 512 is within SmolLM2's 8K."""
    return "none" if args.rehearsal else "theta"


def write_recipe(layout: Layout, args: argparse.Namespace, arm: str, seed: int) -> Path:
    """The arm's recipe: recipes/smollm2-135m-64k.toml's model and Lighthouse settings (2K-context
    ones in a rehearsal), the budget knobs, and for `dense` every one of the 30 layers dense.
    The lighthouse arm takes `--lighthouse-set TABLE.FIELD=VALUE` on top (the levers of #18:
    `lighthouse.combine="finest"`, `train.recovery_schedule="rewarm"`, ...)."""
    stage1, recovery = budget(args)
    if args.rehearsal:
        lighthouse = {"levels": 2, "pooling": 4, "topk": 128, "tile": 64}
        train = {"precision": "fp32", "loss_chunk": 512, "activation_checkpointing": False}
    else:
        lighthouse = {"levels": 3, "pooling": 4, "topk": 2048, "tile": 128}
        train = {"precision": "bf16", "loss_chunk": 4096, "activation_checkpointing": "selective",
                 "compile": True}
    lighthouse["dense_layers"] = list(range(30)) if arm in ("dense", REPEAT) else [0, 1, -2, -1]
    train.update(micro_batch_size=1, grad_accum=args.grad_accum, stage1_steps=stage1,
                 recovery_fraction=recovery / stage1, lr=args.lr, warmup_steps=args.warmup,
                 eval_every=args.eval_every, eval_batches=args.eval_batches,
                 checkpoint_every=args.checkpoint_every or args.steps, keep_checkpoints=1,
                 seed=seed)
    if arm == "lighthouse":
        for setting in args.lighthouse_set:
            key, _, value = setting.partition("=")
            table, _, field = key.partition(".")
            if table not in ("lighthouse", "train") or not field or not value:
                sys.exit(f"--lighthouse-set {setting!r}: use TABLE.FIELD=VALUE with TABLE "
                         f"lighthouse or train, VALUE in TOML syntax (\"finest\", 20, true)")
            chosen = lighthouse if table == "lighthouse" else train
            chosen[field] = tomllib.loads(f"v = {value}")["v"]
    model = layout.config_only if args.init == "random" else MODEL
    lines = [f'name = "replication-{arm}"',
             f'description = "{args.study or "issue #6"}, arm {arm}: {stage1} + {recovery} steps"',
             f'model = "{model}"', f'ctx = "{args.ctx}"', f'rope = "{rope(args)}"',
             f'init = "{args.init}"', "", "[lighthouse]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in lighthouse.items()]
    lines += ["", "[train]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in train.items()]
    layout.recipes.mkdir(parents=True, exist_ok=True)
    path = layout.recipes / f"{arm}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def step_arm(layout: Layout, args: argparse.Namespace, arm: str, *, seed: int | None = None) -> None:
    """extend (stage 1) then recover (the rest), on the arm's recipe; resumes a partial run."""
    recipe = write_recipe(layout, args, arm, args.seed if seed is None else seed)
    out = layout.runs / arm
    if args.must_resume and not (out / "checkpoints").is_dir():
        # Seen 2026-12-02: a call found neither .rep/<study> nor /tmp's copy of it, and the
        # arms started again from step 0, spending the session's device time twice.
        sys.exit(f"{arm}: --must-resume, but {out} has no checkpoint to resume from (the "
                 f"earlier call's state is gone); not starting the arm again from step 0")
    run(layout, arm, cli("extend", "--recipe", str(recipe), "--out", str(out),
                         "--data", str(layout.corpus)))
    run(layout, arm, cli("recover", "--run", str(out)))


# ---- device: evaluation ------------------------------------------------------------------------


def step_eval(layout: Layout, args: argparse.Namespace) -> None:
    """Make the two untrained models, then evaluate every model in `--models`."""
    original_ctx = args.ctx if args.rehearsal else "8k"
    made = {"original": ("--ctx", original_ctx, "--rope", "none"), "rope-only": ("--ctx", args.ctx, "--rope", rope(args))}
    for name in args.models.split(","):
        folder = layout.runs / name
        if name in made and not (folder / "manifest.json").is_file():
            if args.rehearsal:
                extra = ("--levels", "2", "--topk", "128", "--tile", "64")
            elif name == "original":  # the recipe's top-k needs >= 32K; this one is never trained
                extra = ("--topk", "512")
            else:
                extra = ()
            run(layout, "eval", cli("convert", "--model", MODEL, "--out", str(folder),
                                    *made[name], *extra))
        if not folder.is_dir():
            sys.exit(f"eval: {folder} does not exist; run the `{name}` step first")
        run(layout, "eval", [sys.executable, __file__, "eval-one", "--model", name,
                             *forwarded(args)])


def forwarded(args: argparse.Namespace) -> list[str]:
    options = ["--eval-lengths", args.eval_lengths, "--eval-samples", str(args.eval_samples),
               "--windows", str(args.windows), "--seed", str(args.seed)]
    return options + (["--rehearsal"] if args.rehearsal else [])


def step_eval_one(layout: Layout, args: argparse.Namespace) -> None:
    """One model: validation loss by length (`valloss.json`), then `run_eval` (what
    `lh-convert eval` runs) on the long-context suite, in bf16 on a GPU."""
    import torch

    from lh_convert.evaluate.runner import load_dense_model, run_eval
    from lh_convert.util.units import parse_lengths

    folder, out = layout.runs / args.model, layout.eval / args.model
    lengths = parse_lengths(args.eval_lengths)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, context = load_dense_model(path=folder, device=device, dtype=dtype)
    from valloss import validation_loss  # experiments/replication/valloss.py

    losses = validation_loss(model, tokenizer=tokenizer, corpus=layout.corpus, device=device,
                             lengths=[n for n in lengths if n <= context], windows=args.windows)
    (out / "valloss.json").write_text(json.dumps({"model": args.model, "context": context,
                                                  **losses}, indent=1))
    del model
    run_eval(model=folder, out=out, suite="long-context", lengths=lengths, device=device,
             seed=args.seed, samples=args.eval_samples, data=(str(layout.corpus),), dtype=dtype)


def step_settings_probe(layout: Layout, args: argparse.Namespace) -> None:
    """The model converted at `--ctx` (the arms' Lighthouse settings), untrained, and its loss
    on `--windows` held-out windows under each layer set, rule and top-k of settings_probe.py:
    eval/settings-probe/settings_probe.json."""
    folder, out = layout.runs / "settings-probe", layout.eval / "settings-probe"
    if not (folder / "manifest.json").is_file():
        extra = ("--levels", "2", "--topk", "128", "--tile", "64") if args.rehearsal else ()
        run(layout, "settings-probe", cli("convert", "--model", MODEL, "--out", str(folder),
                                          "--ctx", args.ctx, "--rope", rope(args), *extra))
    out.mkdir(parents=True, exist_ok=True)
    probe = Path(__file__).with_name("settings_probe.py")
    run(layout, "settings-probe", [sys.executable, str(probe), "--run", str(folder),
                                   "--data", str(layout.corpus), "--windows", str(args.windows),
                                   "--out", str(out / "settings_probe.json")])


# ---- pack and report ---------------------------------------------------------------------------

PACKED = ("runs/*/metrics.jsonl", "runs/*/loss.png", "runs/*/recipe.json", "runs/*/manifest.json",
          "eval/*/results.md", "eval/*/summary.json", "eval/*/*.png", "eval/*/valloss.json",
          "eval/*/settings_probe.json", "eval/*/*/lm_eval_results.json", "logs/*.log",
          "timings.jsonl", "recipes/*.toml")


def step_pack(layout: Layout, args: argparse.Namespace) -> None:
    """The small outputs, one .tar.gz: under $OUT on the GPU machine, else .rep/."""
    target = Path(os.environ.get("OUT") or layout.root) / f"{args.study or 'replication'}.tar.gz"
    target.parent.mkdir(parents=True, exist_ok=True)
    files = sorted({path for pattern in PACKED for path in layout.root.glob(pattern)})
    extra = [layout.corpus / "meta.json", layout.corpus / "composition.json"]
    with tarfile.open(target, "w:gz") as tar:
        for path in files + [p for p in extra if p.is_file()]:
            name = path.relative_to(layout.root) if path.is_relative_to(layout.root) else \
                Path("corpus") / path.name
            tar.add(path, arcname=str(name))
    print(f"packed {len(files)} files into {target} ({target.stat().st_size / 1e6:.2f} MB)")


def step_report(layout: Layout, args: argparse.Namespace) -> None:
    from report import write_report  # experiments/replication/report.py

    from lh_convert.util.units import parse_context

    archives = args.archive or [layout.root / f"{args.study or 'replication'}.tar.gz"]
    study = {"study": Path(args.out).name, "model": "SmolLM2-135M", "init": args.init,
             "context": parse_context(args.ctx), "note": args.note}
    write_report(archives=archives, out=Path(args.out), stage1=budget(args)[0],
                 summary=Path(args.summary) if args.summary else None, study=study)


def step_save(layout: Layout, args: argparse.Namespace) -> None:
    """Copy .rep to KEEP, outside the repository: the GPU machine does not keep .rep between
    calls (seen 2026-11-29: each call found only the paths it carried there), /tmp it keeps."""
    scratch = KEEP.with_name(KEEP.name + ".tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(REP, scratch, symlinks=True)
    shutil.rmtree(KEEP, ignore_errors=True)
    scratch.rename(KEEP)
    print(f"saved {REP} to {KEEP}")


def _put_back(kept: Path, target: Path) -> int:
    """Copy what `kept` holds and `target` lacks, links as links (a folder on both sides gets
    the missing part of its contents); returns the number of files and links copied."""
    if kept.is_dir() and not kept.is_symlink():
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            return 0
        target.mkdir(exist_ok=True)
        return sum(_put_back(child, target / child.name) for child in sorted(kept.iterdir()))
    if os.path.lexists(target):
        return 0
    shutil.copy2(kept, target, follow_symlinks=False)
    return 1


def step_restore(layout: Layout, args: argparse.Namespace) -> None:
    """Put back what `save` kept and .rep lacks, file by file (what a call carried stays as
    carried; a folder this call already started, such as .rep/rehearsal, gets the rest)."""
    found = sorted(p.name for p in REP.iterdir()) if REP.is_dir() else []
    print(f"restore: {REP} holds {found or 'nothing'} at the call's start")
    if not KEEP.is_dir():
        print(f"restore: nothing kept in {KEEP} yet")
        return
    print(f"restore: {KEEP} holds {sorted(p.name for p in KEEP.iterdir())}")
    REP.mkdir(exist_ok=True)
    restored = sum(_put_back(entry, REP / entry.name) for entry in sorted(KEEP.iterdir()))
    print(f"restore: {restored} files put back")


def step_frontier(layout: Layout, args: argparse.Namespace) -> None:
    from report import write_frontier  # experiments/replication/report.py

    if not args.summary or len(args.archive) != 1:
        sys.exit("frontier: give --summary (docs/conversion/summary.json) and one --archive "
                 "holding the dense arm the studies share, e.g. \"docs/replication-240/raw/"
                 "replication-240.tar.gz#dense\"")
    write_frontier(summary=Path(args.summary), dense_archive=args.archive[0], out=Path(args.out))


STEPS = {"prepare": step_prepare, "save": step_save, "restore": step_restore,
         "stage-a": step_stage_a, "join": step_join, "unpack": step_unpack,
         "dense": lambda layout, args: step_arm(layout, args, "dense"),
         "lighthouse": lambda layout, args: step_arm(layout, args, "lighthouse"),
         REPEAT: lambda layout, args: step_arm(layout, args, REPEAT, seed=args.seed + 1),
         "eval": step_eval, "eval-one": step_eval_one, "settings-probe": step_settings_probe,
         "pack": step_pack, "report": step_report, "frontier": step_frontier}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("steps_to_run", nargs="+", metavar="STEP", choices=sorted(STEPS),
                        help="one or more of: " + ", ".join(STEPS))
    parser.add_argument("--study", default="",
                        help="a study's name: its runs, evals, logs and timings live under "
                             ".rep/NAME (the shared corpus and caches stay in .rep) and `pack` "
                             "writes NAME.tar.gz [none: .rep itself, replication.tar.gz]")
    parser.add_argument("--init", choices=("pretrained", "random"), default="pretrained",
                        help="random: SmolLM2's architecture and tokenizer with fresh weights "
                             "(the from-scratch control; needs only .rep/c, no GGUF)")
    parser.add_argument("--lighthouse-set", action="append", default=[], metavar="TABLE.FIELD=VALUE",
                        help="a recipe field of the lighthouse arm, e.g. lighthouse.combine="
                             "\"finest\" or train.recovery_schedule=\"rewarm\" (repeatable)")
    parser.add_argument("--must-resume", action="store_true",
                        help="arm steps: refuse to start an arm from step 0 (a later device "
                             "call that expects the earlier call's checkpoint)")
    parser.add_argument("--rehearsal", action="store_true",
                        help="CPU scale: 512 context, 2 steps, small eval, under .rep/rehearsal")
    parser.add_argument("--steps", type=int, default=None,
                        help="total optimizer steps of each arm [80; rehearsal 2]")
    parser.add_argument("--lighthouse-fraction", type=float, default=0.75,
                        help="share of the steps the lighthouse arm trains with Lighthouse")
    parser.add_argument("--grad-accum", type=int, default=None,
                        help="sequences per step (micro-batch 1) [2; rehearsal 1]")
    parser.add_argument("--ctx", default=None, help="target context [64k; rehearsal 512]")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=None, help="warmup steps [5; rehearsal 1]")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="steps between validation losses [5; rehearsal 1]")
    parser.add_argument("--checkpoint-every", type=int, default=None,
                        help="steps between checkpoints [the budget: one at the end]; a call "
                             "cut off by the device's time limit resumes from the last one")
    parser.add_argument("--eval-batches", type=int, default=2,
                        help="validation sequences per validation loss")
    parser.add_argument("--seed", type=int, default=0, help="seed of every arm and the eval data")
    parser.add_argument("--models", default=",".join(MODELS), help="models the eval step evaluates")
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--eval-lengths", default=None,
                        help="eval prompt lengths [4k,8k,16k,32k,64k; rehearsal 256,512]")
    parser.add_argument("--eval-samples", type=int, default=1,
                        help="long-context rows per (length, depth) cell")
    parser.add_argument("--windows", type=int, default=6,
                        help="validation windows of the longest length for the loss by length")
    parser.add_argument("--no-wheels", dest="wheels", action="store_false",
                        help="prepare: do not download the wheels")
    parser.add_argument("--archive", action="append", default=[],
                        help="report: a packed .tar.gz; repeat it to merge archives packed by "
                             "calls that did not share .rep, in the order they ran; "
                             "PATH#ARM,ARM takes only those arms' records from it")
    parser.add_argument("--out", default="docs/replication", help="report: folder for the plots")
    parser.add_argument("--summary", default=None,
                        help="report: also put the study's entry into this JSON list "
                             "(docs/conversion/summary.json)")
    parser.add_argument("--note", default="", help="report: a line saying what the study is")
    args = parser.parse_args()
    sys.path[:0] = [str(REPO), str(REP / "site")]
    small = args.rehearsal
    for name, real, rehearsal in (("steps", 80, 2), ("grad_accum", 2, 1), ("ctx", "64k", "512"),
                                  ("warmup", 5, 1), ("eval_every", 5, 1),
                                  ("eval_lengths", "4k,8k,16k,32k,64k", "256,512")):
        if getattr(args, name) is None:
            setattr(args, name, rehearsal if small else real)
    if small and args.windows == 6:
        args.windows = 2
    layout = Layout(args)
    layout.root.mkdir(parents=True, exist_ok=True)
    for step in args.steps_to_run:
        started = time.perf_counter()
        print(f"== {step}", flush=True)
        STEPS[step](layout, args)
        print(f"== {step} done in {time.perf_counter() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()

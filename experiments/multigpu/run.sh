#!/usr/bin/env bash
# Issue #8 in one device call: FSDP2 scaling at 64K, context parallelism at 256K, and the
# losses of CP runs against one GPU. Run from the repository root:
#
#   bash experiments/multigpu/run.sh               # device tool, kind nvidia-h200-x2 or -x4, timeout_s 600
#   bash experiments/multigpu/run.sh --rehearsal   # any CPU machine: same steps, gloo, tiny shapes
#
# Carry: nothing. The loss check's model (random init, with a BPE tokenizer trained on the
# spot) and corpus (this Python's standard library) are made by make_model.py, offline.
#
# Environment (all optional):
#   OUT       where the results go (the device tool sets it; default ./multigpu-out)
#   NGPU      processes for the multi-GPU parts (default: every GPU; 2 in a rehearsal)
#   PARTS     steps to run, in this order (default: all):
#             loss-1 loss-N cp-N scaling-N scaling-1 cp-1
#   CP_SHAPE  bench shape for the 256K context-parallel runs (default llama-1b)
#   BUDGET_S  seconds for the whole script (default 510); a step gets at most what is left,
#             and one with under 20 s left is skipped (run it later with PARTS)
#   PYTHON    the interpreter (default python3)
#
# Results under $OUT (at most 8 files): run.log (this output), summary.md, summary.json
# (targets judged by summarize.py), results.tar.gz (every step's log, bench JSON, metrics.jsonl).
set -uo pipefail

REHEARSAL=0
[[ ${1:-} == --rehearsal ]] && REHEARSAL=1
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$PWD/multigpu-out}
PARTS=${PARTS:-loss-1 loss-N cp-N scaling-N scaling-1 cp-1}
BUDGET_S=${BUDGET_S:-510}
RESERVE_S=15  # for the summary and the archive
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d /tmp/lh-multigpu.XXXX)
trap 'rm -rf "$W"' EXIT
mkdir -p "$OUT" "$W/logs" && touch "$W/status"
exec > >(tee "$OUT/run.log") 2>&1

# NVLink multicast stays off (device tool: it can take a shared host's GPUs out of service).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false LH_CONVERT_CACHE=$W/cache

if ! $PYTHON -c "import lh_convert, lighthouse_kernels" 2>/dev/null; then
  $PYTHON -m pip install -q --no-deps --no-build-isolation -e . || exit 2
fi

if (( REHEARSAL )); then
  export OMP_NUM_THREADS=1
  N=${NGPU:-2}
  DEVICE=(--device cpu)
  SCALING=(--lengths 1k --shape tiny --no-compile --modes lighthouse)
  CP=(--lengths 2k --shape tiny --steps 1 --warmup 1)
  SIZE=rehearsal CTX=2048 PRECISION=fp32 CHUNK=1024
  LIGHTHOUSE='levels = 2
pooling = 4
topk = 256
tile = 32
dense_layers = [0, -1]'
else
  N=${NGPU:-$($PYTHON -c "import torch; print(torch.cuda.device_count())")}
  DEVICE=(--device cuda)
  SCALING=(--lengths 64k --shape paper-367m --modes lighthouse)
  CP=(--lengths 256k --shape "${CP_SHAPE:-llama-1b}" --steps 1 --warmup 1)
  SIZE=gpu CTX=32768 PRECISION=bf16 CHUNK=4096
  LIGHTHOUSE='dense_layers = [0, 1, -2, -1]'  # SPEC defaults: L=3, p=4, k=2048, m=128
fi
if (( N < 2 )); then
  echo "error: this needs 2 or more GPUs (found $N); on a CPU machine use --rehearsal"
  exit 2
fi
LH=("$PYTHON" -m lh_convert.cli)
TORCHRUN=("$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$N" -m lh_convert.cli --)
echo "multi-GPU run: $N processes, rehearsal=$REHEARSAL, parts: $PARTS, budget ${BUDGET_S}s, work $W"
$PYTHON -c "import torch, transformers; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'GPUs', torch.cuda.device_count(), torch.cuda.get_device_name(0)
if torch.cuda.is_available() else '')"

# step NAME LIMIT_S CMD...: run CMD under timeout, for at most LIMIT_S and what the budget leaves.
step() {
  local name=$1 limit=$2 started=$SECONDS
  shift 2
  local left=$(( BUDGET_S - SECONDS - RESERVE_S ))
  (( left < limit )) && limit=$left
  if (( limit < 20 )); then
    echo "[$name] skipped: ${left}s of the budget left" | tee -a "$W/status"
    return 1
  fi
  echo "[$name] $(date +%T), limit ${limit}s: $*"
  timeout -k 10 "$limit" "$@" >"$W/logs/$name.log" 2>&1
  local rc=$?
  grep -v -e '^\[rank[0-9]*\]:W' -e 'Warning' -e 'warnings.warn' -e 'it/s\]' -e 's/it\]' \
    -e 'step/s' "$W/logs/$name.log" | tail -n 12
  echo "[$name] rc=$rc after $(( SECONDS - started ))s" | tee -a "$W/status"
  return $rc
}

wanted() { [[ " $PARTS " == *" $1 "* ]]; }

if wanted loss-1 || wanted loss-N; then
  step make-model 60 "$PYTHON" "$HERE/make_model.py" --out "$W/model" --data "$W/data" --size $SIZE
  cat >"$W/recipe.toml" <<EOF
name = "multigpu-loss-check"
description = "Random-init Llama, a few steps of both stages: the losses of cp=N against cp=1."
model = "$W/model"
ctx = "$CTX"
rope = "theta"

[lighthouse]
$LIGHTHOUSE

[train]
stage1_steps = 4
recovery_fraction = 0.5
lr = 1e-3
warmup_steps = 1
precision = "$PRECISION"
activation_checkpointing = "selective"
loss_chunk = $CHUNK
checkpoint_every = 100
keep_checkpoints = 1
eval_every = 2
eval_batches = 1
EOF
fi
# The same recipe, data and seed: both runs read the same batches (dp = 1 in both).
wanted loss-1 && step loss-1 120 bash -c "${LH[*]} extend --recipe $W/recipe.toml --out $W/loss-1 \
  --data $W/data && ${LH[*]} recover --run $W/loss-1"
wanted loss-N && step loss-N 120 bash -c "${TORCHRUN[*]} extend --recipe $W/recipe.toml \
  --out $W/loss-$N --data $W/data --cp $N && ${TORCHRUN[*]} recover --run $W/loss-$N --cp $N"
# Context parallelism: Lighthouse-CP vs dense-CP (the dense row is the recovery stage's step).
wanted cp-N && step cp-N 180 "${TORCHRUN[@]}" bench train "${DEVICE[@]}" "${CP[@]}" --cp "$N" \
  --out "$W/cp-$N"
# FSDP2 data parallel, each rank its own batch: tokens/s per GPU against one GPU.
wanted scaling-N && step scaling-N 150 "${TORCHRUN[@]}" bench train "${DEVICE[@]}" \
  "${SCALING[@]}" --out "$W/scaling-$N"
wanted scaling-1 && step scaling-1 150 "${LH[@]}" bench train "${DEVICE[@]}" "${SCALING[@]}" \
  --out "$W/scaling-1"
# One GPU at the CP runs' shape and length, eager as CP runs: its gain is the target.
wanted cp-1 && step cp-1 180 "${LH[@]}" bench train "${DEVICE[@]}" "${CP[@]}" --no-compile \
  --out "$W/cp-1"

$PYTHON "$HERE/summarize.py" "$W" "$N" "$OUT"
cp "$W/recipe.toml" "$W/logs/" 2>/dev/null
(cd "$W" && tar -czf "$OUT/results.tar.gz" logs status ./*/bench_train.json \
  ./loss-*/metrics.jsonl ./loss-*/loss.png 2>/dev/null)
echo "done in ${SECONDS}s; results in $OUT:" "$OUT"/*

#!/usr/bin/env bash
# Issue #18, second session of 2026-12-03: three conversion levers at the full 240-step budget,
# each against the dense arm of `replication-240` (same recipe, seed, batches and schedule; its
# seed + 1 repeat, in `replication-240-f055`, gives the spread 0.002). Stage split 180 + 60 as in
# `replication-240` (sum rule: 1.577, dense at the same time 1.379, gap +0.20).
#
#   call1            carry .rep/a .whl       wheels + GGUF part 1 into /tmp (~20 s; send the
#                                            next call at once: the machine idles out after 30 s)
#   arm NAME         carry .rep/b .rep/c     GGUF joined (part 1 from /tmp), one Lighthouse arm
#                                            of 240 steps (~480 s), packed into $OUT. Exits 3 at
#                                            once when part 1 is gone (a fresh machine): then
#                                            call1 again, then the arm again.
#   NAME: finest | finest-rewarm | finest-rewarm-ramp   (study convert-240-NAME)
#         shallow-finest-rewarm: Lighthouse in layers 2-14 only (13 of 30; the rest dense)
#         alternate-finest-rewarm: Lighthouse in layers 3, 5, ..., 27 (13 of 30)
#   probe            carry .rep/b .rep/c     settings_probe.py at 64K: the converted model's loss
#                                            before training under each layer set / rule / top-k
#                                            (study settings-probe, packed into $OUT)
#
# Every arm call carries part 2 itself (65.0 MB of the 67.1 MB a call may carry, with the repo
# and .rep/c), so only part 1 and the wheels must survive between calls. REHEARSAL=1 runs the
# same flow at CPU scale (8 steps at 512 context) under .rep/rehearsal.
set -uo pipefail
cd "$(dirname "$0")/../../.."
R=experiments/replication/replicate.py
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
start=$SECONDS
if [[ -n "${REHEARSAL:-}" ]]; then
    K=(--rehearsal --steps 8 --lighthouse-fraction 0.75 --eval-every 2 --checkpoint-every 2)
    RAMP_STEPS=2 REWARM_STEPS=1
else
    K=(--steps 240 --lighthouse-fraction 0.75 --eval-every 20 --checkpoint-every 40)
    RAMP_STEPS=40 REWARM_STEPS=5
fi
FINEST=(--lighthouse-set 'lighthouse.combine="finest"')
REWARM=(--lighthouse-set 'train.recovery_schedule="rewarm"'
        --lighthouse-set "train.recovery_warmup_steps=$REWARM_STEPS")
RAMP=(--lighthouse-set "train.sparsify_steps=$RAMP_STEPS"
      --lighthouse-set 'train.sparsify_layers="deepest-first"')
# settings_probe.py's layer sets of SmolLM2's 30 layers (0, 1, 28, 29 dense in every set)
SHALLOW=(--lighthouse-set "lighthouse.dense_layers=[0, 1, $(seq -s ', ' 15 29)]")
ALTERNATE=(--lighthouse-set "lighthouse.dense_layers=[0, 1, $(seq -s ', ' 2 2 26), 28, 29]")

case "${1:?call1|arm NAME}" in
call1)
    python3 $R stage-a save "${K[@]}"
    ;;
arm)
    name=${2:?an arm NAME (see the top of this file)}
    case "$name" in
    finest) levers=("${FINEST[@]}") ;;
    finest-rewarm) levers=("${FINEST[@]}" "${REWARM[@]}") ;;
    finest-rewarm-ramp) levers=("${FINEST[@]}" "${REWARM[@]}" "${RAMP[@]}") ;;
    shallow-finest-rewarm) levers=("${FINEST[@]}" "${REWARM[@]}" "${SHALLOW[@]}") ;;
    alternate-finest-rewarm) levers=("${FINEST[@]}" "${REWARM[@]}" "${ALTERNATE[@]}") ;;
    *) echo "unknown arm $name"; exit 2 ;;
    esac
    study=convert-240-$name
    python3 $R restore "${K[@]}"
    if ! python3 $R join "${K[@]}"; then
        echo "== PART 1 GONE (fresh machine): send call1, then this arm again"
        exit 3
    fi
    timeout -s INT $(( 575 - (SECONDS - start) )) \
        python3 $R lighthouse "${K[@]}" --study "$study" "${levers[@]}"
    python3 $R pack "${K[@]}" --study "$study"
    ;;
probe)  # carry .rep/b .rep/c: the settings probe at 64K (settings_probe.py), no training
    python3 $R restore "${K[@]}"
    python3 $R join "${K[@]}" || { echo "== PART 1 GONE (fresh machine)"; exit 3; }
    python3 $R settings-probe pack "${K[@]}" --study settings-probe --windows 2
    ;;
*) echo "unknown call $1"; exit 2 ;;
esac
echo "== ${1} ${2:-} done in $((SECONDS - start))s"

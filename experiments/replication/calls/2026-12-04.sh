#!/usr/bin/env bash
# Issue #18, 2026-12-04: the levers not yet measured at the full 240-step budget, each against the
# dense arm of `replication-240` (same recipe, seed, batches and schedule; spread 0.002 from
# `replication-240-f055`'s seed + 1 repeat), each on top of the best so far (finest + rewarm,
# +0.071 at equal time):
#
#   shallow-finest-rewarm   Lighthouse in layers 2-14 only (13 of 30, nearest home in the CPU
#                           settings probe); ~650 s, more than one call: `arm` is cut off, keeps
#                           its state in /tmp (`save`), and `resume` finishes it
#   finest-rewarm-ramp      the Lighthouse layers switched on deepest first over 40 steps
#   finest-rewarm-lr1e-4    stage 1's peak 1e-4 instead of 3e-4 (recovery still re-warms to 3e-4,
#                           floor still 3e-5)
#
# Added 2026-12-06 (second session; for an H200, whose dense arm replication-240 ran on):
#   shallow7-finest-rewarm  Lighthouse in layers 2-8 only (7 of 30): a step nearer a dense one's
#                           cost than the 13-layer set's 0.74; ~700 s, cut off, then `resume`
#   finest-rewarm-lr6e-4    stage 1's peak 6e-4 (recovery re-warms to 3e-4, floor 3e-5)
#
# Calls (send each at once after the last: the machine idles out after 30 s and keeps nothing):
#   call1          carry .rep/a .whl       wheels + GGUF part 1 into /tmp (~20 s)
#   arm NAME       carry .rep/b .rep/c     one Lighthouse arm, packed into $OUT; when the call's
#                                          limit cuts it off, its state is saved to /tmp (exit 4:
#                                          send `resume NAME` next). Exit 3 when part 1 is gone.
#   resume NAME    carry .rep/b .rep/c     the same arm from its last checkpoint (--must-resume)
#
# ARM_LIMIT (seconds, default 555 less the call's set-up, leaving room for pack + save) bounds
# the arm's training commands. Exit 5: the arm failed (/tmp keeps what it had).
# REHEARSAL=1 runs the same flow at CPU scale (8 steps at 512 context) under .rep/rehearsal.
source "$(dirname "$0")/arm.sh"  # the calls, train_arm, exit codes, shared levers
if [[ -n "${REHEARSAL:-}" ]]; then
    K=(--rehearsal --steps 8 --lighthouse-fraction 0.75 --eval-every 2 --checkpoint-every 2)
    RAMP_STEPS=2 REWARM_STEPS=1
else
    K=(--steps 240 --lighthouse-fraction 0.75 --eval-every 20 --checkpoint-every 40)
    RAMP_STEPS=40 REWARM_STEPS=5
fi
REWARM=(--lighthouse-set 'train.recovery_schedule="rewarm"'
        --lighthouse-set "train.recovery_warmup_steps=$REWARM_STEPS")
RAMP=(--lighthouse-set "train.sparsify_steps=$RAMP_STEPS"
      --lighthouse-set 'train.sparsify_layers="deepest-first"')
# stage 1 at a third of the peak; recovery_peak and min_lr_ratio keep recovery's peak (3e-4)
# and the floor (3e-5) where finest-rewarm has them
LOW_LR=(--lighthouse-set 'train.lr=1e-4' --lighthouse-set 'train.recovery_peak=3.0'
        --lighthouse-set 'train.min_lr_ratio=0.3')
SHALLOW7=(--lighthouse-set "lighthouse.dense_layers=[0, 1, $(seq -s ', ' 9 29)]")

arm_of() {
    step=lighthouse study=convert-240-$1
    case "$1" in
    shallow-finest-rewarm) levers=("${FINEST[@]}" "${REWARM[@]}" "${SHALLOW[@]}") ;;
    finest-rewarm-ramp) levers=("${FINEST[@]}" "${REWARM[@]}" "${RAMP[@]}") ;;
    finest-rewarm-lr1e-4) levers=("${FINEST[@]}" "${REWARM[@]}" "${LOW_LR[@]}") ;;
    shallow7-finest-rewarm) levers=("${FINEST[@]}" "${REWARM[@]}" "${SHALLOW7[@]}") ;;
    finest-rewarm-lr6e-4) levers=("${FINEST[@]}" "${REWARM[@]}" "${HIGH_LR[@]}") ;;
    *) echo "unknown arm $1 (see the top of this file)"; exit 2 ;;
    esac
}

calls_main "$@"

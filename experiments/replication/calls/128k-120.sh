#!/usr/bin/env bash
# Issue #18, prepared 2026-12-04 for the next session: the conversion at 128K, where a Lighthouse
# step should cost about a quarter of a dense one (64K: 0.41), so it needs to be worth less.
# SmolLM2-135M GGUF 8K -> 128K (RoPE theta for 16x), one 128K sequence a step (the same
# 131,072 tokens a step as the 64K studies), 120 steps (90 Lighthouse + 30 recovery), study
# `convert-128k-120`, its own dense arm (no 128K dense arm exists yet):
#
#   call1               carry .rep/a .whl      wheels + GGUF part 1 into /tmp (~20 s)
#   arm dense           carry .rep/b .rep/c    dense at 128K (~5 s a step: ~700 s, so it is cut
#                                              off; exit 4, then `resume dense`)
#   resume dense        carry .rep/b .rep/c    the rest of it (--must-resume)
#   arm finest-rewarm   carry .rep/b .rep/c    finest + rewarm (3 warm-up steps), 26 of 30 layers
#   arm shallow-finest-rewarm                  the same in layers 2-14 only, if time is left
#
# Added 2026-12-06 (second session; on an H100, so that study 4's dense arm, also H100, is the
# baseline: each arm below is its own study, reported against convert-128k-120's dense arm):
#   arm shallow-finest-rewarm   (above) ~650 s: cut off, then `resume shallow-finest-rewarm`
#   arm k4096-finest-rewarm     finest + rewarm with k = 4096 (64K's share of the sequence)
#   arm finest-rewarm-lr6e-4    finest + rewarm, stage 1's peak 6e-4 (recovery still re-warms
#                               to 3e-4, floor still 3e-5)
#
# Each call packs its study archive into $OUT (`convert-128k-120.tar.gz`: every arm run so far,
# as the archive of a later call includes the earlier arms' files). Exit 3: GGUF part 1 gone
# (fresh machine: call1 again); 4: cut off, state kept in /tmp; 5: the arm failed.
# ARM_LIMIT (seconds, default 555 less the call's set-up) bounds an arm's training commands.
# REHEARSAL=1 runs the same flow at CPU scale (8 steps at 512 context) under .rep/rehearsal.
source "$(dirname "$0")/arm.sh"  # the calls, train_arm, exit codes, shared levers
SAVE_AFTER_ARM=1  # the next arm's call restores the study with this arm in it
STUDY=convert-128k-120
if [[ -n "${REHEARSAL:-}" ]]; then
    K=(--rehearsal --steps 8 --lighthouse-fraction 0.75 --eval-every 2 --checkpoint-every 2)
    REWARM_STEPS=1 WIDE_K=256
else
    K=(--ctx 128k --grad-accum 1 --steps 120 --lighthouse-fraction 0.75 --eval-every 20
       --checkpoint-every 40)
    REWARM_STEPS=3 WIDE_K=4096
fi
REWARM=(--lighthouse-set 'train.recovery_schedule="rewarm"'
        --lighthouse-set "train.recovery_warmup_steps=$REWARM_STEPS")
WIDE=(--lighthouse-set "lighthouse.topk=$WIDE_K")  # twice the recipe's k (a rehearsal's too)

arm_of() {  # the replicate.py step, flags and study of arm $1
    study=$STUDY
    case "$1" in
    dense) step=dense levers=() ;;
    finest-rewarm) step=lighthouse levers=("${FINEST[@]}" "${REWARM[@]}") ;;
    shallow-finest-rewarm) step=lighthouse study=$STUDY-$1
        levers=("${FINEST[@]}" "${REWARM[@]}" "${SHALLOW[@]}") ;;
    k4096-finest-rewarm) step=lighthouse study=$STUDY-$1
        levers=("${FINEST[@]}" "${REWARM[@]}" "${WIDE[@]}") ;;
    finest-rewarm-lr6e-4) step=lighthouse study=$STUDY-$1
        levers=("${FINEST[@]}" "${REWARM[@]}" "${HIGH_LR[@]}") ;;
    *) echo "unknown arm $1 (see the top of this file)"; exit 2 ;;
    esac
}

calls_main "$@"

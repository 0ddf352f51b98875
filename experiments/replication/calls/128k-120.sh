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
# Each call packs its study archive into $OUT (`convert-128k-120.tar.gz`: every arm run so far,
# as the archive of a later call includes the earlier arms' files). Exit 3: GGUF part 1 gone
# (fresh machine: call1 again); 4: cut off, state kept in /tmp; 5: the arm failed.
# ARM_LIMIT (seconds, default 555 less the call's set-up) bounds an arm's training commands.
# REHEARSAL=1 runs the same flow at CPU scale (8 steps at 512 context) under .rep/rehearsal.
set -uo pipefail
cd "$(dirname "$0")/../../.."
R=experiments/replication/replicate.py
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
start=$SECONDS
STUDY=convert-128k-120
if [[ -n "${REHEARSAL:-}" ]]; then
    K=(--rehearsal --steps 8 --lighthouse-fraction 0.75 --eval-every 2 --checkpoint-every 2)
    REWARM_STEPS=1
else
    K=(--ctx 128k --grad-accum 1 --steps 120 --lighthouse-fraction 0.75 --eval-every 20
       --checkpoint-every 40)
    REWARM_STEPS=3
fi
FINEST=(--lighthouse-set 'lighthouse.combine="finest"')
REWARM=(--lighthouse-set 'train.recovery_schedule="rewarm"'
        --lighthouse-set "train.recovery_warmup_steps=$REWARM_STEPS")
SHALLOW=(--lighthouse-set "lighthouse.dense_layers=[0, 1, $(seq -s ', ' 15 29)]")

arm_of() {  # the replicate.py step and its flags of arm $1
    case "$1" in
    dense) step=dense levers=() ;;
    finest-rewarm) step=lighthouse levers=("${FINEST[@]}" "${REWARM[@]}") ;;
    shallow-finest-rewarm) step=lighthouse levers=("${FINEST[@]}" "${REWARM[@]}" "${SHALLOW[@]}") ;;
    *) echo "unknown arm $1 (see the top of this file)"; exit 2 ;;
    esac
}

train_arm() {  # $@: extra flags for the arm's step
    local study=$STUDY
    [[ $step == lighthouse && $name != finest-rewarm ]] && study=$STUDY-$name
    python3 $R restore "${K[@]}"
    if ! python3 $R join "${K[@]}"; then
        echo "== PART 1 GONE (fresh machine): send call1, then this arm again"
        exit 3
    fi
    local limit=${ARM_LIMIT:-$(( 555 - (SECONDS - start) ))}
    timeout -s INT "$limit" python3 $R $step "${K[@]}" --study "$study" "${levers[@]}" "$@"
    local rc=$?
    python3 $R pack "${K[@]}" --study "$study"
    if (( rc == 124 )); then  # cut off by the limit: keep the state for `resume`
        python3 $R save "${K[@]}"
        echo "== ARM CUT OFF after $((SECONDS - start))s: state kept; send \`resume $name\`"
        exit 4
    elif (( rc != 0 )); then  # failed: /tmp keeps what it had
        echo "== ARM FAILED (rc $rc) after $((SECONDS - start))s"
        exit 5
    fi
    python3 $R save "${K[@]}"  # the next arm's call restores the study with this arm in it
}

case "${1:?call1|arm NAME|resume NAME}" in
call1)
    python3 $R stage-a save "${K[@]}"
    ;;
arm|resume)
    name=${2:?an arm NAME (see the top of this file)}
    arm_of "$name"
    if [[ $1 == resume ]]; then train_arm --must-resume; else train_arm; fi
    ;;
*) echo "unknown call $1"; exit 2 ;;
esac
echo "== ${1} ${2:-} done in $((SECONDS - start))s"

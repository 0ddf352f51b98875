#!/usr/bin/env bash
# Issue #18, 2026-12-03: the device calls of one session, each an argument of this script
# (`bash experiments/replication/calls/2026-12-03.sh call2`), run from the repository root on
# the GPU machine. Every arm finishes inside one call or is resumed from /tmp by the next call
# issued at once (the machine keeps /tmp only while it stays warm, 30 s after a call).
#
#   call1  carry .rep/a .whl       wheels + GGUF part 1 into /tmp (~20 s: send call2 at once)
#   bench  carry nothing           GPU check of the combine rules (kernel tests) and bench
#                                  attention sum/mean/finest (what 2026-12-03's call 1 also ran)
#   call2  carry .rep/b .rep/c     GGUF joined; the dense conversion arm, 160 steps
#                                  (fallback when part 1 is gone: the from-scratch dense arm
#                                  with seed + 1, the spread of the scratch-160 study)
#   call3  carry .rep/c            Lighthouse arm A (finest + rewarm), then arm B started
#   call4  carry .rep/c            arm B resumed and finished, then arm C while time lasts
set -uo pipefail
cd "$(dirname "$0")/../../.."
R=experiments/replication/replicate.py
K="--steps 160 --lighthouse-fraction 0.75 --eval-every 20 --checkpoint-every 40"
FINEST=(--lighthouse-set 'lighthouse.combine="finest"')
REWARM=(--lighthouse-set 'train.recovery_schedule="rewarm"'
        --lighthouse-set 'train.recovery_warmup_steps=5')
RAMP=(--lighthouse-set 'train.sparsify_steps=40'
      --lighthouse-set 'train.sparsify_layers="deepest-first"')
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
start=$SECONDS
left() { echo $(( ${1:-560} - (SECONDS - start) )); }

have_gguf() {  # the joined GGUF in .rep/cache (restored from /tmp)
    python3 -c "
import sys; sys.path.insert(0, 'experiments/replication')
from replicate import alias_gguf, REP; sys.exit(0 if alias_gguf(REP / 'cache').is_file() else 1)"
}

# One Lighthouse arm of study $1 (extra --lighthouse-set options after it), cut at the call's
# time left (lh-convert saves a checkpoint on SIGINT), then packed into $OUT and kept in /tmp.
arm() {
    local study=$1; shift
    local limit; limit=$(left "${LIMIT:-560}")
    if (( limit < 60 )); then echo "== $study: ${limit}s left, not started"; return; fi
    timeout -s INT "$limit" python3 $R lighthouse $K --study "$study" "$@"
    python3 $R pack save $K --study "$study"
}

case "${1:?call1|bench|call2|call3|call4}" in
call1)
    python3 $R stage-a save
    ;;
bench)
    mkdir -p .rep/site && ln -sfn "$PWD/kernels" .rep/site/lighthouse_kernels
    export PYTHONPATH=$PWD:$PWD/.rep/site
    timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/kernels/test_scatter.py \
        tests/kernels/test_golden.py 2>&1 | tail -n 25
    timeout $(left 540) python3 -m lh_convert.cli bench attention --lengths 64k,128k \
        --combine sum,mean,finest --out "$OUT/bench"
    ;;
call2)
    python3 $R restore
    if python3 $R join save; then
        timeout -s INT "$(left 565)" python3 $R dense $K --study convert-160
        python3 $R pack save $K --study convert-160
    else
        echo "== GGUF part 1 is gone: the from-scratch dense repeat (seed + 1) instead"
        python3 $R unpack
        timeout -s INT "$(left 565)" python3 $R dense-repeat $K --init random --study scratch-160
        python3 $R pack save $K --init random --study scratch-160
    fi
    ;;
call3)
    python3 $R restore
    if have_gguf; then
        arm convert-160-finest-rewarm "${FINEST[@]}" "${REWARM[@]}"
        arm convert-160-finest-ramp-rewarm "${FINEST[@]}" "${REWARM[@]}" "${RAMP[@]}"
    else
        echo "== no GGUF kept: from scratch with combine = finest instead (vs scratch-160's dense)"
        python3 $R unpack
        timeout -s INT "$(left 565)" python3 $R lighthouse $K --init random \
            --study scratch-160-finest "${FINEST[@]}"
        python3 $R pack save $K --init random --study scratch-160-finest
    fi
    ;;
call4)
    python3 $R restore
    have_gguf || { echo "== no GGUF kept; nothing to resume"; exit 3; }
    arm convert-160-finest-ramp-rewarm "${FINEST[@]}" "${REWARM[@]}" "${RAMP[@]}"
    arm convert-160-finest "${FINEST[@]}"
    ;;
esac
echo "== ${1} done in $((SECONDS - start))s"

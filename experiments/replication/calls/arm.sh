# Sourced by a session's calls script (2026-12-04.sh, 128k-120.sh): the device-call flow their
# arms share, and the levers both use (FINEST, SHALLOW, HIGH_LR). Before `calls_main "$@"` the
# script sets K (replicate.py's budget flags) and defines `arm_of NAME`, which sets `step`
# (dense or lighthouse), `levers` (its
# --lighthouse-set flags) and `study`. SAVE_AFTER_ARM=1 keeps .rep in /tmp after a finished
# arm too (a later call's arm shares its study).
#
#   call1          wheels + GGUF part 1 into /tmp (`stage-a save`)
#   arm NAME       restore, join (exit 3: GGUF part 1 gone), the arm under ARM_LIMIT seconds
#                  (default 555 less the call's set-up, leaving room for pack + save), pack;
#                  exit 4 when the limit cut it off (state saved to /tmp: send `resume NAME`),
#                  5 when it failed (/tmp keeps what it had)
#   resume NAME    the same with --must-resume
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."

# Levers the calls scripts share (replicate.py's --lighthouse-set flags on the recipe):
FINEST=(--lighthouse-set 'lighthouse.combine="finest"')
SHALLOW=(--lighthouse-set "lighthouse.dense_layers=[0, 1, $(seq -s ', ' 15 29)]")  # LH in 2-14
# stage 1 at twice the peak; recovery_peak and min_lr_ratio keep recovery's peak (3e-4) and the
# floor (3e-5) where the default schedule has them
HIGH_LR=(--lighthouse-set 'train.lr=6e-4' --lighthouse-set 'train.recovery_peak=0.5'
         --lighthouse-set 'train.min_lr_ratio=0.05')
R=experiments/replication/replicate.py
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
start=$SECONDS

train_arm() {  # $@: extra flags for the arm's step
    python3 $R restore "${K[@]}"
    if ! python3 $R join "${K[@]}"; then
        echo "== PART 1 GONE (fresh machine): send call1, then this arm again"
        exit 3
    fi
    local limit=${ARM_LIMIT:-$(( 555 - (SECONDS - start) ))}
    timeout -s INT "$limit" python3 $R "$step" "${K[@]}" --study "$study" "${levers[@]}" "$@"
    local rc=$?
    python3 $R pack "${K[@]}" --study "$study"
    if (( rc == 124 )); then  # cut off by the limit: keep the state for `resume`
        python3 $R save "${K[@]}"
        echo "== ARM CUT OFF after $((SECONDS - start))s: state kept; send \`resume $name\`"
        exit 4
    elif (( rc != 0 )); then  # failed: /tmp keeps what it had (a failed resume keeps its state)
        echo "== ARM FAILED (rc $rc) after $((SECONDS - start))s"
        exit 5
    fi
    if [[ -n "${SAVE_AFTER_ARM:-}" ]]; then
        python3 $R save "${K[@]}"
    fi
}

calls_main() {
    case "${1:?call1|arm NAME|resume NAME}" in
    call1)
        python3 $R stage-a save "${K[@]}"
        ;;
    arm|resume)
        name=${2:?an arm NAME (see the top of the calls script)}
        arm_of "$name"
        if [[ $1 == resume ]]; then train_arm --must-resume; else train_arm; fi
        ;;
    *) echo "unknown call $1"; exit 2 ;;
    esac
    echo "== ${1} ${2:-} done in $((SECONDS - start))s"
}

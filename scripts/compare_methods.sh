#!/usr/bin/env bash
# One table of methods: CDSR, DASR and KDSR checkpoints scored on one protocol (the same
# degradations, the same LR images, the same metric code), gathered into
# experiment/<TAG>/methods.{md,csv,json}: rows = methods, columns = test sets, PSNR / SSIM
# averaged over the protocol's settings, the Bicubic (MATLAB) row last.
#
#   scripts/compare_methods.sh CKPT [CKPT ...]          # score these (ours or the authors')
#   scripts/compare_methods.sh KDSR-S-M=CKPT ...        # name a row (default: the model)
#   scripts/compare_methods.sh                          # train MODELS on PRESET first, then score
#   TEST_PATH=../shared/datasets/benchmark scripts/compare_methods.sh     # the README's table
#
# PROTOCOL (default gaussian8: 8 isotropic blurs, noise 0, at the checkpoint's scale) is any
# test.py --protocol; TEST_PATH (default: test.py's) and DATA_TEST (default Set5+Set14) the
# benchmark sets; TEST_FLAGS more test.py flags (e.g. "--protocol_noise 0"). Without
# checkpoints it trains each of MODELS (default "CDSR DASR KDSR-S-M") with main.py --preset
# PRESET (default demo: the same seed, data and budget for all; KDSR's teacher epochs come on
# top of its student's, README 'KDSR') and TRAIN_FLAGS, into experiment/<TAG>_<model>, and
# scores that run's last.pt. Everything is written under experiment/ of the current folder.
set -euo pipefail
PYTHON=${PYTHON:-python}
PRESET=${PRESET:-demo}
TAG=${TAG:-methods}
PROTOCOL=${PROTOCOL:-gaussian8}
DATA_TEST=${DATA_TEST:-Set5+Set14}
MODELS=${MODELS:-CDSR DASR KDSR-S-M}
read -r -a TRAIN_FLAGS <<< "${TRAIN_FLAGS:-}"
read -r -a TEST_FLAGS <<< "${TEST_FLAGS:-}"
[ -n "${TEST_PATH:-}" ] && TEST_FLAGS+=(--test_path "$TEST_PATH")

ROOT=$(cd "$(dirname "$0")/.." && pwd)
checkpoints=("$@")
if [ ${#checkpoints[@]} -eq 0 ]; then
    for model in $MODELS; do
        $PYTHON "$ROOT/main.py" --preset "$PRESET" --model "$model" --save "${TAG}_${model}" "${TRAIN_FLAGS[@]}"
        checkpoints+=("${model}=experiment/${TAG}_${model}/checkpoint/last.pt")
    done
fi
runs=()
for i in "${!checkpoints[@]}"; do
    entry=${checkpoints[$i]}
    label=""
    checkpoint=$entry
    if [[ "$entry" == *=* ]]; then
        label=${entry%%=*}
        checkpoint=${entry#*=}
    fi
    save="${TAG}_scored_$i"
    $PYTHON "$ROOT/test.py" --pre_train "$checkpoint" --protocol "$PROTOCOL" --data_test "$DATA_TEST" \
        --save "$save" "${TEST_FLAGS[@]}"
    runs+=("${label:+$label=}experiment/$save")
done
$PYTHON "$ROOT/scripts/ablation_table.py" "${runs[@]}" --out "experiment/$TAG" --name methods

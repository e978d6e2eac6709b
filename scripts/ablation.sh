#!/usr/bin/env bash
# CDSR's ablation table: train every model of MODELS on one recipe, score each checkpoint with
# test.py, and gather one table (rows = models, columns = test sets) into
# experiment/<TAG>/ablation.{md,csv,json}.
#
#   scripts/ablation.sh [extra main.py flags]                   # the demo recipe, bundled photos
#   TEST_PATH=../shared/datasets/benchmark DATA_TEST=Set5+Set14 scripts/ablation.sh
#   PRESET=cdsr TEST_PATH=/data/sr/benchmark scripts/ablation.sh --dir_data /data/sr/DF2K/HR
#
# MODELS: default CDSR, its cdsr-* ablations and DASR (KDSR: scripts/compare_methods.sh). PRESET (default
# demo) fixes the recipe for all of them, so DASR and CDSR train on the same budget; extra flags
# are passed to every main.py. Each checkpoint is scored on the held-out sample photos and, with
# TEST_PATH, on DATA_TEST (default Set5+Set14) under the same fixed degradation (--sig etc.,
# which TEST_FLAGS may set, e.g. TEST_FLAGS="--sig 1.8").
set -euo pipefail
PYTHON=${PYTHON:-python}
PRESET=${PRESET:-demo}
TAG=${TAG:-ablation}
DATA_TEST=${DATA_TEST:-Set5+Set14}
read -r -a TEST_FLAGS <<< "${TEST_FLAGS:-}"

cd "$(dirname "$0")/.."
MODELS=${MODELS:-$($PYTHON -c 'from model.variants import variant_names; print(" ".join(["cdsr", *variant_names(), "dasr"]))')}
runs=()
for model in $MODELS; do
    save=${TAG}_${model}
    $PYTHON main.py --preset "$PRESET" --model "$model" --save "$save" "$@"
    checkpoint=experiment/$save/checkpoint/last.pt
    $PYTHON test.py --pre_train "$checkpoint" --save "${save}_photos" "${TEST_FLAGS[@]}"
    runs+=("experiment/${save}_photos")
    if [ -n "${TEST_PATH:-}" ]; then
        $PYTHON test.py --pre_train "$checkpoint" --test_path "$TEST_PATH" --data_test "$DATA_TEST" \
            --save "${save}_sets" "${TEST_FLAGS[@]}"
        runs+=("experiment/${save}_sets")
    fi
done
$PYTHON scripts/ablation_table.py "${runs[@]}" --out "experiment/$TAG"

#!/usr/bin/env bash
# Kernel-width sweep: score one checkpoint under isotropic Gaussian blur of each width in
# SIGMAS (std-dev in HR pixels, DASR convention: centred 21x21 kernel, MATLAB bicubic), no
# noise, and gather the tables into experiment/sweep_kernel_width.csv.
#
#   scripts/sweep_kernel_width.sh [CHECKPOINT] [extra test.py flags]
#   SIGMAS="0 1 2 3 4" scripts/sweep_kernel_width.sh experiment/dasr_iso_x4/checkpoint/last.pt
#
# DIR_DATA/benchmark holds <Set>/HR/ (or <Set>/x<s>/).
set -euo pipefail
DIR_DATA=${DIR_DATA:-/data/sr}          # <- the only thing to change
PYTHON=${PYTHON:-python}
DATA_TEST=${DATA_TEST:-Set5+Set14+B100+Urban100}
SIGMAS=${SIGMAS:-0 0.4 0.8 1.2 1.6 2.0 2.4 2.8 3.2 3.6 4.0}
CHECKPOINT=${1:-experiment/dasr_iso_x4/checkpoint/last.pt}
shift $(( $# < 1 ? $# : 1 ))

cd "$(dirname "$0")/.."
summary=experiment/sweep_kernel_width.csv
mkdir -p experiment && rm -f "$summary"
for sig in $SIGMAS; do
    run=sweep_kernel_width_sig${sig}
    $PYTHON test.py --pre_train "$CHECKPOINT" --degradation dasr --blur_type iso_gaussian --sig "$sig" \
        --noise 0 --test_path "$DIR_DATA/benchmark" --data_test "$DATA_TEST" --save "$run" "$@"
    [ -f "$summary" ] || sed -n '1s/^/sigma,/p' "experiment/$run/results.csv" > "$summary"
    tail -n +2 "experiment/$run/results.csv" | sed "s/^/$sig,/" >> "$summary"
done
echo "kernel-width sweep: $summary"

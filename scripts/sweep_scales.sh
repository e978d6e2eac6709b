#!/usr/bin/env bash
# Scale sweep: score the x2, x3 and x4 checkpoints (SCALES) of a recipe on one protocol and gather the
# tables into experiment/sweep_scales_<protocol>.csv (columns: scale + test.py's results.csv).
#
#   scripts/sweep_scales.sh [CHECKPOINT_PATTERN] [PROTOCOL] [extra test.py flags]
#   e.g. scripts/sweep_scales.sh 'experiment/cdsr_aniso_x{s}_noise0/checkpoint/last.pt' cdsr --chop
#
# {s} in the pattern becomes the scale. DIR_DATA/benchmark holds <Set>/HR/ (or <Set>/x<s>/).
set -euo pipefail
DIR_DATA=${DIR_DATA:-/data/sr}          # <- the only thing to change
PYTHON=${PYTHON:-python}
DATA_TEST=${DATA_TEST:-Set5+Set14+B100+Urban100}
PATTERN=${1:-experiment/dasr_iso_x{s\}/checkpoint/last.pt}
PROTOCOL=${2:-dasr-iso}
SCALES=${SCALES:-2 3 4}
shift $(( $# < 2 ? $# : 2 ))

cd "$(dirname "$0")/.."
summary=experiment/sweep_scales_${PROTOCOL}.csv
mkdir -p experiment && rm -f "$summary"
for scale in $SCALES; do
    run=sweep_scales_${PROTOCOL}_x${scale}
    $PYTHON test.py --pre_train "${PATTERN//\{s\}/$scale}" --protocol "$PROTOCOL" \
        --test_path "$DIR_DATA/benchmark" --data_test "$DATA_TEST" --save "$run" "$@"
    [ -f "$summary" ] || sed -n '1s/^/scale,/p' "experiment/$run/results.csv" > "$summary"
    tail -n +2 "experiment/$run/results.csv" | sed "s/^/$scale,/" >> "$summary"
done
echo "scale sweep: $summary"

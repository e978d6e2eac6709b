#!/usr/bin/env bash
# Noise sweep: score one checkpoint on every kernel of a protocol at each noise level in NOISES
# (0..255 units; the protocol's seeded noise) and gather the tables into
# experiment/sweep_noise_<protocol>.csv.
#
#   scripts/sweep_noise.sh [CHECKPOINT] [PROTOCOL] [extra test.py flags]
#   NOISES="0 15" scripts/sweep_noise.sh experiment/cdsr_aniso_x4_noise15/checkpoint/last.pt cdsr
#
# DIR_DATA/benchmark holds <Set>/HR/ (or <Set>/x<s>/).
set -euo pipefail
DIR_DATA=${DIR_DATA:-/data/sr}          # <- the only thing to change
PYTHON=${PYTHON:-python}
DATA_TEST=${DATA_TEST:-Set5+Set14+B100+Urban100}
NOISES=${NOISES:-0 5 10 15 20 25}
CHECKPOINT=${1:-experiment/dasr_aniso_x4/checkpoint/last.pt}
PROTOCOL=${2:-dasr-aniso}
shift $(( $# < 2 ? $# : 2 ))

cd "$(dirname "$0")/.."
summary=experiment/sweep_noise_${PROTOCOL}.csv
mkdir -p experiment && rm -f "$summary"
for noise in $NOISES; do
    run=sweep_noise_${PROTOCOL}_n${noise}
    $PYTHON test.py --pre_train "$CHECKPOINT" --protocol "$PROTOCOL" --protocol_noise "$noise" \
        --test_path "$DIR_DATA/benchmark" --data_test "$DATA_TEST" --save "$run" "$@"
    [ -f "$summary" ] || head -n 1 "experiment/$run/results.csv" > "$summary"
    tail -n +2 "experiment/$run/results.csv" >> "$summary"     # has a noise column already
done
echo "noise sweep: $summary"

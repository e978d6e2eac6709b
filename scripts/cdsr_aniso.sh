#!/usr/bin/env bash
# CDSR paper recipe (ACM MM 2022, Table 2): train CDSR on DF2K with anisotropic Gaussian blur
# (MANet convention: variances in [0.175*s, 2.5*s], the README's [0.35, 5] at x2), then score it on
# the cdsr protocol (MANet's 9 kernels; x4 also noise 15) over Set5/Set14/B100/Urban100.
#
#   scripts/cdsr_aniso.sh SCALE [NOISE] [extra main.py flags]     e.g. scripts/cdsr_aniso.sh 4 15
#
# DIR_DATA holds DF2K/HR/ (training) and benchmark/<Set>/HR/ (or <Set>/x<s>/) for testing.
set -euo pipefail
DIR_DATA=${DIR_DATA:-/data/sr}          # <- the only thing to change
PYTHON=${PYTHON:-python}
# e.g. TRAIN="torchrun --standalone --nproc_per_node 4 --signals_to_handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
# (the signal list lets a scheduler's SIGUSR1 reach the training processes: they checkpoint)
TRAIN=${TRAIN:-$PYTHON}
DATA_TEST=${DATA_TEST:-Set5+Set14+B100+Urban100}
SCALE=${1:-4}
NOISE=${2:-0}
shift $(( $# < 2 ? $# : 2 ))
SIG_MIN=$(awk -v s="$SCALE" 'BEGIN { print 0.175 * s }')
SIG_MAX=$(awk -v s="$SCALE" 'BEGIN { print 2.5 * s }')
SAVE=cdsr_aniso_x${SCALE}_noise${NOISE}

cd "$(dirname "$0")/.."
$TRAIN main.py --preset cdsr --model CDSR --dir_data "$DIR_DATA/DF2K/HR" --test_path "$DIR_DATA/benchmark" \
    --scale "$SCALE" --blur_type aniso_gaussian --sig_min "$SIG_MIN" --sig_max "$SIG_MAX" --noise "$NOISE" \
    --save "$SAVE" "$@"
# Noise 0 scores the noise-free settings; noise 15 (x4) scores the noise-15 ones.
$PYTHON test.py --pre_train "experiment/$SAVE/checkpoint/last.pt" --protocol cdsr --protocol_noise "$NOISE" \
    --test_path "$DIR_DATA/benchmark" --data_test "$DATA_TEST" --save "${SAVE}_test" --save_results

#!/usr/bin/env bash
# DASR paper recipe (CVPR 2021, Table 2): train DASR with isotropic Gaussian blur (std-dev in
# [0.2, 2.0] at x2, [0.2, 3.0] at x3, [0.2, 4.0] at x4; no noise), 100 epochs of encoder
# pre-training then 500 SR epochs, and score it on the dasr-iso protocol.
#
#   scripts/dasr_iso.sh SCALE [extra main.py flags]      e.g. scripts/dasr_iso.sh 2
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
shift $(( $# < 1 ? $# : 1 ))
SAVE=dasr_iso_x${SCALE}

cd "$(dirname "$0")/.."
$TRAIN main.py --preset dasr --model DASR --dir_data "$DIR_DATA" --data_train DF2K \
    --test_path "$DIR_DATA/benchmark" --scale "$SCALE" --blur_type iso_gaussian --sig_min 0.2 \
    --sig_max "$SCALE".0 --noise 0 --save "$SAVE" "$@"
$PYTHON test.py --pre_train "experiment/$SAVE/checkpoint/last.pt" --protocol dasr-iso \
    --test_path "$DIR_DATA/benchmark" --data_test "$DATA_TEST" --save "${SAVE}_test" --save_results

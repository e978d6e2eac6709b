#!/usr/bin/env bash
# DASR paper recipe (CVPR 2021, Table 3): train DASR x4 with anisotropic Gaussian blur (std-devs
# lambda in [0.2, 4.0], angle uniform) and noise up to 25, then score it on the dasr-aniso
# protocol (9 kernels x noise 0, 5, 10).
#
#   scripts/dasr_aniso.sh [extra main.py flags]
#
# DIR_DATA holds DF2K/HR/ (training) and benchmark/<Set>/HR/ (or <Set>/x<s>/) for testing.
set -euo pipefail
DIR_DATA=${DIR_DATA:-/data/sr}          # <- the only thing to change
PYTHON=${PYTHON:-python}
# e.g. TRAIN="torchrun --standalone --nproc_per_node 4 --signals_to_handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
# (the signal list lets a scheduler's SIGUSR1 reach the training processes: they checkpoint)
TRAIN=${TRAIN:-$PYTHON}
DATA_TEST=${DATA_TEST:-Set5+Set14+B100+Urban100}
SAVE=dasr_aniso_x4

cd "$(dirname "$0")/.."
$TRAIN main.py --preset dasr --model DASR --dir_data "$DIR_DATA" --data_train DF2K \
    --test_path "$DIR_DATA/benchmark" --scale 4 --blur_type aniso_gaussian --lambda_min 0.2 \
    --lambda_max 4.0 --noise 25 --save "$SAVE" "$@"
$PYTHON test.py --pre_train "experiment/$SAVE/checkpoint/last.pt" --protocol dasr-aniso \
    --test_path "$DIR_DATA/benchmark" --data_test "$DATA_TEST" --save "${SAVE}_test" --save_results

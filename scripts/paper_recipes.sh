#!/usr/bin/env bash
# Every paper recipe in turn: CDSR x2/x3/x4 anisotropic, CDSR x4 anisotropic + noise 15,
# DASR isotropic x2/x3/x4, DASR x4 anisotropic + noise. Each trains (days on one GPU) and then
# writes its protocol table to experiment/<run>_test/results.md.
#
#   DIR_DATA=/data/sr scripts/paper_recipes.sh [extra main.py flags, e.g. --n_GPUs 2]
#   DIR_DATA=/data/sr TRAIN="torchrun --standalone --nproc_per_node 4 --signals_to_handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1" \
#       scripts/paper_recipes.sh
#
# Under torchrun the signal list lets a scheduler's SIGUSR1 reach the training processes: they
# checkpoint (see README, "Several GPUs and machines").
set -euo pipefail
export DIR_DATA=${DIR_DATA:-/data/sr}   # <- the only thing to change
here="$(dirname "$0")"
for scale in 2 3 4; do "$here/cdsr_aniso.sh" "$scale" 0 "$@"; done
"$here/cdsr_aniso.sh" 4 15 "$@"
for scale in 2 3 4; do "$here/dasr_iso.sh" "$scale" "$@"; done
"$here/dasr_aniso.sh" "$@"

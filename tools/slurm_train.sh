#!/usr/bin/env bash
# Training on a Slurm cluster, one task per GPU.
#   [GPUS=8 GPUS_PER_NODE=8 CPUS_PER_TASK=5 SRUN_ARGS="..."] \
#   bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG [train.py args...]
# Add --resume to continue after preemption (the last checkpoint of the work
# dir). CPU-only nodes: GRES= (gloo). Other variables: tools/slurm_srun.sh.
set -euo pipefail

PARTITION=$1
JOB_NAME=$2
CONFIG=$3

# shellcheck source=tools/slurm_srun.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm_srun.sh"
slurm_srun "$PARTITION" "$JOB_NAME" train.py "$CONFIG" "${@:4}"

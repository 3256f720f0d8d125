#!/usr/bin/env bash
# Testing on a Slurm cluster, one task per GPU. Run from the repository root.
#   [GPUS=8 GPUS_PER_NODE=8 CPUS_PER_TASK=5 SRUN_ARGS="..."] \
#   bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args...]
# CHECKPOINT 'none' runs a training-free model without a checkpoint.
# PYTHON selects the interpreter (default: python).
set -x

PARTITION=$1
JOB_NAME=$2
CONFIG=$3
CHECKPOINT=$4
GPUS=${GPUS:-4}
GPUS_PER_NODE=${GPUS_PER_NODE:-4}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PY_ARGS=("${@:5}")

CKPT_ARG=()
if [[ -n "$CHECKPOINT" && "$CHECKPOINT" != "none" ]]; then
    CKPT_ARG=("$CHECKPOINT")
fi

# shellcheck disable=SC2086
PYTHONPATH="$(dirname "$0")/..":${PYTHONPATH:-} \
srun -p "${PARTITION}" \
    --job-name="${JOB_NAME}" \
    --gres=gpu:"${GPUS_PER_NODE}" \
    --ntasks="${GPUS}" \
    --ntasks-per-node="${GPUS_PER_NODE}" \
    --cpus-per-task="${CPUS_PER_TASK}" \
    --kill-on-bad-exit=1 \
    ${SRUN_ARGS} \
    "${PYTHON:-python}" -u tools/test.py "${CONFIG}" ${CKPT_ARG[@]+"${CKPT_ARG[@]}"} \
    --launcher="slurm" "${PY_ARGS[@]}"

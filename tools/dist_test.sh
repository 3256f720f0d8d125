#!/usr/bin/env bash
# Distributed testing with torchrun.
#   bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py args...]
#   bash tools/dist_test.sh CONFIG none GPUS [...]   # training-free models
# One node: torchrun --standalone picks a free port (set PORT to use a fixed one).
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR (and PORT) on every node.
# PYTHON selects the interpreter (default: python).
set -euo pipefail

CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

if [[ "$NNODES" == 1 && -z "${PORT:-}" ]]; then
    RDZV_ARGS=(--standalone)
else
    RDZV_ARGS=(--nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR"
               --master_port="${PORT:-29500}")
fi

# 'none' (or '') stands for "no checkpoint" so that GPUS stays the third argument.
CKPT_ARG=()
if [[ -n "$CHECKPOINT" && "$CHECKPOINT" != "none" ]]; then
    CKPT_ARG=("$CHECKPOINT")
fi

# exec keeps this pid, so the ranks know their launcher (they stop when it dies).
export TAGCLIP_LAUNCHER_PID=$$
PYTHONPATH="$(dirname "$0")/..":${PYTHONPATH:-} \
exec "${PYTHON:-python}" -m torch.distributed.run \
    "${RDZV_ARGS[@]}" \
    --nproc_per_node="$GPUS" \
    "$(dirname "$0")/test.py" \
    "$CONFIG" \
    ${CKPT_ARG[@]+"${CKPT_ARG[@]}"} \
    --launcher pytorch \
    "${@:4}"

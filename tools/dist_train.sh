#!/usr/bin/env bash
# Distributed training on one or several nodes with torchrun.
#   bash tools/dist_train.sh CONFIG GPUS [train.py args...]
# One node: torchrun --standalone picks a free port (set PORT to use a fixed one).
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR (and PORT) on every node.
# PYTHON selects the interpreter (default: python).
set -euo pipefail

CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

if [[ "$NNODES" == 1 && -z "${PORT:-}" ]]; then
    RDZV_ARGS=(--standalone)
else
    RDZV_ARGS=(--nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR"
               --master_port="${PORT:-29500}")
fi

# exec keeps this pid, so the ranks know their launcher (they stop when it dies).
export TAGCLIP_LAUNCHER_PID=$$
PYTHONPATH="$(dirname "$0")/..":${PYTHONPATH:-} \
exec "${PYTHON:-python}" -m torch.distributed.run \
    "${RDZV_ARGS[@]}" \
    --nproc_per_node="$GPUS" \
    "$(dirname "$0")/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"

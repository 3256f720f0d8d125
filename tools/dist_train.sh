#!/usr/bin/env bash
# Distributed training on one or several nodes with torchrun.
#   bash tools/dist_train.sh CONFIG GPUS [train.py args...]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR (and PORT) on every node.
# PYTHON selects the interpreter (default: python).
# TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 lets torch >= 2.6 unpickle the trusted
# training checkpoints that --resume reads (OpenMMLab trap 6); importing
# tagclip_mmseg applies the same fix inside Python.
set -euo pipefail

CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

export TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=${TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:-1}
PYTHONPATH="$(dirname "$0")/..":${PYTHONPATH:-} \
"${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$(dirname "$0")/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"

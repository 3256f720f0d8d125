#!/usr/bin/env bash
# Testing, tagging or pseudo-labelling on a Slurm cluster, one task per GPU.
#   [GPUS=8 GPUS_PER_NODE=8 CPUS_PER_TASK=5 SRUN_ARGS="..."] \
#   bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [tool args...]
# CHECKPOINT 'none' runs a training-free model without a checkpoint.
# TOOL=generate_pseudo_labels.py runs the pseudo-label tool instead of
# tools/test.py (CHECKPOINT 'none'; pass --out DIR and --tags FILE after it).
# CPU-only nodes: GRES= (gloo). Other variables: tools/slurm_srun.sh.
set -euo pipefail

PARTITION=$1
JOB_NAME=$2
CONFIG=$3
CHECKPOINT=${4:-none}
TOOL=${TOOL:-test.py}

CKPT_ARG=()
if [[ "$CHECKPOINT" != "none" ]]; then
    if [[ "$TOOL" != "test.py" ]]; then
        echo "tools/$TOOL takes no checkpoint: pass 'none' as CHECKPOINT" >&2
        exit 2
    fi
    CKPT_ARG=("$CHECKPOINT")
fi
case "$TOOL" in
    test.py|generate_pseudo_labels.py) ;;
    *) echo "TOOL must be test.py or generate_pseudo_labels.py, not '$TOOL'" >&2; exit 2 ;;
esac

# shellcheck source=tools/slurm_srun.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm_srun.sh"
slurm_srun "$PARTITION" "$JOB_NAME" "$TOOL" "$CONFIG" ${CKPT_ARG[@]+"${CKPT_ARG[@]}"} "${@:5}"

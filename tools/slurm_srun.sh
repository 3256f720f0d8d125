#!/usr/bin/env bash
# Sourced by tools/slurm_test.sh and tools/slurm_train.sh: run one tool of this
# checkout under srun, one task per GPU (or per CPU slot on CPU-only nodes).
#   slurm_srun PARTITION JOB_NAME TOOL [tool args...]
# Environment (mmseg's names):
#   GPUS           tasks in all (default 4)
#   GPUS_PER_NODE  tasks per node (default 4)
#   CPUS_PER_TASK  CPUs per task (default 5)
#   GRES           generic resources per node (default gpu:$GPUS_PER_NODE);
#                  set it empty (GRES=) on nodes without GPUs: gloo on the CPU
#   MASTER_PORT    rendezvous port on the job's first node (default: a port
#                  free on this host, so that two jobs do not meet on 29500)
#   SRUN_ARGS      more srun options (split on spaces), e.g. "--time=60"
#   PYTHON         the interpreter (default: python)
# The checkout the script belongs to comes first on PYTHONPATH, so its
# tagclip_mmseg is the one that runs, whatever is installed.

slurm_srun() {
    local partition=$1 job_name=$2 tool=$3
    shift 3
    local root python gres
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    python=${PYTHON:-python}
    gres=${GRES-gpu:${GPUS_PER_NODE:-4}}
    local gres_arg=()
    if [[ -n "$gres" ]]; then
        gres_arg=(--gres="$gres")
    fi
    if [[ -z "${MASTER_PORT:-}" ]]; then
        MASTER_PORT=$("$python" -c \
            'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
    fi
    export MASTER_PORT
    echo "MASTER_PORT=$MASTER_PORT" >&2
    set -x
    # SRUN_ARGS is split on purpose: it holds several srun options.
    # shellcheck disable=SC2086
    PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" \
    srun -p "$partition" \
        --job-name="$job_name" \
        ${gres_arg[@]+"${gres_arg[@]}"} \
        --ntasks="${GPUS:-4}" \
        --ntasks-per-node="${GPUS_PER_NODE:-4}" \
        --cpus-per-task="${CPUS_PER_TASK:-5}" \
        --kill-on-bad-exit=1 \
        ${SRUN_ARGS:-} \
        "$python" -u "$root/tools/$tool" "$@" --launcher=slurm
}

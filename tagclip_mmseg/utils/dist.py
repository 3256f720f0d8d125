"""Distributed launch on machines without a GPU.

mmengine's launchers call ``torch.cuda.set_device``; this starts a gloo group
from torchrun's or srun's environment instead (docs/compatibility.md, "Traps":
launchers without a GPU).
"""
import ctypes
import os
import signal
import subprocess
import sys

import torch
import torch.distributed as dist

__all__ = ['export_slurm_environment', 'init_cpu_distributed', 'shutdown_distributed',
           'stop_with_launcher', 'LAUNCHER_PID_ENV']

#: ``prctl`` option: signal this process when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1

#: Environment variable with the launcher's pid: ``tools/dist_test.sh`` and
#: ``dist_train.sh`` set it to their own pid, which torchrun keeps (``exec``).
LAUNCHER_PID_ENV = 'TAGCLIP_LAUNCHER_PID'

#: The parent when this module was first imported: the launcher's pid for
#: ranks started by hand with torchrun (the scripts' variable wins).
_PARENT_AT_IMPORT = os.getppid()


def _launcher_pid() -> int:
    """The pid of this rank's launcher, recorded at its start."""
    value = os.environ.get(LAUNCHER_PID_ENV, '')
    return int(value) if value.isdigit() else _PARENT_AT_IMPORT


def export_slurm_environment() -> None:
    """Set torch's rendezvous variables from srun's, as mmengine's slurm launcher does.

    ``MASTER_ADDR`` and ``MASTER_PORT`` are set only where unset.
    """
    missing = [k for k in ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST') if k not in os.environ]
    if missing:
        raise RuntimeError(f"--launcher slurm expects srun's environment, but {missing} are not "
                           'set; start the tool with srun or tools/slurm_test.sh')
    if 'MASTER_ADDR' not in os.environ:
        nodes = subprocess.run(['scontrol', 'show', 'hostnames', os.environ['SLURM_NODELIST']],
                               capture_output=True, text=True, check=True, timeout=60)
        os.environ['MASTER_ADDR'] = nodes.stdout.split()[0]
    os.environ.setdefault('MASTER_PORT', '29500')
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['RANK'] = os.environ['SLURM_PROCID']
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')


def init_cpu_distributed(launcher: str, backend: str = 'gloo') -> str:
    """Start a CPU process group for ``launcher`` 'pytorch' or 'slurm' without CUDA.

    Args:
        launcher (str): The launcher asked for on the command line.
        backend (str): The process-group backend. Defaults to 'gloo'.

    Returns:
        str: The launcher to give mmengine's test loops: ``'none'`` when this
        function initialised the process group, else ``launcher`` unchanged.
    """
    if launcher not in ('pytorch', 'slurm') or torch.cuda.is_available():
        return launcher
    if launcher == 'slurm':
        export_slurm_environment()
    if 'RANK' not in os.environ or 'WORLD_SIZE' not in os.environ:
        raise RuntimeError("--launcher pytorch expects torchrun's RANK/WORLD_SIZE environment; "
                           'start the tool with torchrun or tools/dist_test.sh')
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return 'none'


def shutdown_distributed() -> bool:
    """End a finished run's process group on every rank together.

    Called at the end of the tools' ``main`` when the run succeeded. Without
    it the group is torn down by the interpreter's exit, rank by rank: under
    torch 2.13 a gloo rank whose peer has already exited can die in that
    teardown with ``terminate called without an active exception`` (SIGABRT),
    and srun's ``--kill-on-bad-exit`` then fails the whole job after its
    outputs were written. The barrier lets every rank finish its last
    collective first. See docs/compatibility.md, "Traps".

    Returns:
        bool: Whether a process group was destroyed.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return False
    dist.barrier()
    dist.destroy_process_group()
    return True


def stop_with_launcher() -> bool:
    """End this rank with SIGTERM when torchrun (its parent) dies.

    Only under torchrun on Linux. torchrun's ranks run in their own sessions,
    so they would outlive a killed launcher; a rank whose launcher is already
    gone (compared by pid, since a subreaper may adopt orphans) exits at once.

    Returns:
        bool: Whether the parent-death signal was set.
    """
    if 'TORCHELASTIC_RUN_ID' not in os.environ or not sys.platform.startswith('linux'):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    launcher = _launcher_pid()
    if os.getppid() != launcher:  # the launcher died before the request took effect
        sys.exit(f'the torchrun launcher of this rank (pid {launcher}) is gone; stopping')
    return True

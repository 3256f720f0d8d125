"""Distributed launch on machines without a GPU.

mmengine's ``pytorch`` launcher calls ``torch.cuda.set_device`` and uses
NCCL, so ``torchrun ... --launcher pytorch`` fails on a CPU-only machine
(docs/compatibility.md trap 12). For the training-free stages a CPU run over several
processes is still useful (CI, laptops, CPU clusters): this helper starts a
gloo process group from torchrun's environment instead and tells the caller to
hand mmengine ``launcher='none'``; mmengine's samplers and result collection
then use the already-initialised group.

torchrun starts its ranks in their own sessions, so killing the launcher
(even ``tools/dist_test.sh``, which ``exec``s torchrun) would leave them
running, writing into the output a restarted run is about to use.
:func:`stop_with_launcher` makes each rank ask the kernel for SIGTERM when
its parent dies. A launcher that died before that request is noticed by
comparing the parent's pid with the launcher's, not with 1: under a child
subreaper (``systemd --user``, ``tini -s``, job managers) an orphan is
adopted by the subreaper, not by init.
"""
import ctypes
import os
import signal
import sys

import torch
import torch.distributed as dist

__all__ = ['init_cpu_distributed', 'stop_with_launcher', 'LAUNCHER_PID_ENV']

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


def init_cpu_distributed(launcher: str) -> str:
    """Start gloo for ``launcher='pytorch'`` when CUDA is unavailable.

    Args:
        launcher (str): The launcher asked for on the command line.

    Returns:
        str: The launcher to give mmengine: ``'none'`` when this function
        initialised the process group, else ``launcher`` unchanged.
    """
    if launcher != 'pytorch' or torch.cuda.is_available():
        return launcher
    if 'RANK' not in os.environ or 'WORLD_SIZE' not in os.environ:
        raise RuntimeError('--launcher pytorch expects torchrun\'s RANK/WORLD_SIZE environment; '
                           'start the tool with torchrun or tools/dist_test.sh')
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    return 'none'


def stop_with_launcher() -> bool:
    """End this rank with SIGTERM when torchrun (its parent) dies.

    Only under torchrun (``TORCHELASTIC_RUN_ID`` set) on Linux; elsewhere a
    no-op. A rank whose launcher is already gone (its parent is no longer
    the launcher's pid, :data:`LAUNCHER_PID_ENV` or the parent at import)
    exits at once.

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

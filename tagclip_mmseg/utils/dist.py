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
its parent dies.
"""
import ctypes
import os
import signal
import sys

import torch
import torch.distributed as dist

__all__ = ['init_cpu_distributed', 'stop_with_launcher']

#: ``prctl`` option: signal this process when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1


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
    no-op. A rank whose launcher is already gone exits at once.

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
    if os.getppid() == 1:  # the launcher died before the request took effect
        sys.exit('the torchrun launcher of this rank is gone; stopping')
    return True

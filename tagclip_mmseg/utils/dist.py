"""Distributed launch on machines without a GPU.

mmengine's ``pytorch`` launcher calls ``torch.cuda.set_device`` and uses
NCCL, so ``torchrun ... --launcher pytorch`` fails on a CPU-only machine
(OpenMMLab trap 12). For the training-free stages a CPU run over several
processes is still useful (CI, laptops, CPU clusters): this helper starts a
gloo process group from torchrun's environment instead and tells the caller to
hand mmengine ``launcher='none'``; mmengine's samplers and result collection
then use the already-initialised group.
"""
import os

import torch
import torch.distributed as dist

__all__ = ['init_cpu_distributed']


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

"""Train a segmenter (e.g. on pseudo masks) with mmengine's Runner.

The interface of mmsegmentation 1.2.2's ``tools/train.py``, plus:

* ``import tagclip_mmseg`` registers the plugin's models and datasets (every
  config also lists it in ``custom_imports``);
* every checkpoint (``--resume``, ``load_from``, ``init_cfg`` Pretrained) is
  loaded with ``weights_only=True``; mmengine's own training checkpoints still
  resume because exactly their data types are allowlisted (docs/compatibility.md,
  "Traps": ``--resume`` under torch >= 2.6; see
  ``tagclip_mmseg/engine/checkpoint_compat.py``). A file that would run code
  when unpickled is refused;
* ``--resume`` optionally takes a checkpoint path; bare ``--resume`` resumes
  from the last checkpoint of the work dir, as in mmseg;
* ``--launcher pytorch|slurm`` also trains on CPU-only machines: the process
  group is gloo there (in place of the nccl of mmseg's default runtime; nccl
  with CUDA; another ``env_cfg.dist_cfg.backend`` is kept), started here
  because mmengine's launchers need CUDA, and the model is wrapped in DDP
  without device ids (docs/compatibility.md, "Traps": launchers without a GPU).

Examples::

    python tools/train.py configs/deeplab/CONFIG.py
    python tools/train.py configs/deeplab/CONFIG.py --resume       # after preemption
    bash tools/dist_train.sh configs/deeplab/CONFIG.py 4 --amp
    GPUS=2 GPUS_PER_NODE=2 GRES= bash tools/slurm_train.sh PARTITION JOB CONFIG.py  # CPU nodes
"""
import argparse
import logging
import os.path as osp

import torch
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log
from mmengine.runner import Runner
from mmseg.registry import MODEL_WRAPPERS, RUNNERS
from torch.nn.parallel import DistributedDataParallel

import tagclip_mmseg  # noqa: F401  (registers the plugin)
from tagclip_mmseg.engine import safe_checkpoint_loading
from tagclip_mmseg.utils import (add_runner_args, default_work_dir, init_cpu_distributed,
                                 load_config, parse_runner_args, set_in_dicts_of_type,
                                 shutdown_distributed)

#: Batch-norm types whose synchronisation needs CUDA (torch's and mmcv's).
SYNC_BN_TYPES = ['SyncBN', 'MMSyncBN']


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from this checkpoint; without a path, from the latest checkpoint '
        'in the work dir (starting afresh when there is none)')
    parser.add_argument(
        '--amp', action='store_true', default=False,
        help='enable automatic-mixed-precision training')
    add_runner_args(parser)
    return parse_runner_args(parser)


def enable_amp(cfg: Config) -> None:
    """Switch ``OptimWrapper`` to ``AmpOptimWrapper`` with a dynamic loss scale."""
    optim_wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if optim_wrapper == 'AmpOptimWrapper':
        print_log('AMP training is already enabled in your config.',
                  logger='current', level=logging.WARNING)
        return
    if optim_wrapper != 'OptimWrapper':
        raise ValueError('--amp is only supported when the optimizer wrapper type is '
                         f'`OptimWrapper`, but the config uses {optim_wrapper!r}.')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'


def set_resume(cfg: Config, resume: str) -> None:
    """``auto``: latest checkpoint of the work dir; otherwise that checkpoint."""
    if resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    else:
        if not osp.isfile(resume):
            raise FileNotFoundError(f'--resume {resume!r} is not a file; pass a checkpoint '
                                    "path, or --resume alone to use the work dir's latest.")
        cfg.resume = True
        cfg.load_from = resume


def setup_distributed(cfg: Config) -> None:
    """Choose the process-group backend; without CUDA, start it and wrap DDP for the CPU.

    The backend is ``env_cfg.dist_cfg.backend``: nccl by default with CUDA;
    without CUDA gloo, also in place of nccl (which mmseg's default runtime
    sets and which needs CUDA), while another choice such as mpi is kept.

    mmengine's launchers call ``torch.cuda.set_device``, so on a CPU-only
    machine the gloo group is started here; ``cfg.launcher`` stays as it is,
    so the Runner (which skips its own start when a group exists) still wraps
    the model in DDP. CPU modules take no ``device_ids``, and SyncBN has no CPU
    implementation, so it becomes BN (each rank normalises with its own batch).
    """
    if cfg.launcher == 'none':
        return
    env_cfg = cfg.setdefault('env_cfg', ConfigDict())
    dist_cfg = env_cfg.setdefault('dist_cfg', ConfigDict())
    if torch.cuda.is_available():
        dist_cfg.setdefault('backend', 'nccl')
        return
    # mmseg's default runtime sets nccl, which needs CUDA; another choice (mpi) stays.
    if dist_cfg.get('backend', 'nccl') == 'nccl':
        dist_cfg['backend'] = 'gloo'
    init_cpu_distributed(cfg.launcher, backend=dist_cfg['backend'])
    wrapper = cfg.get('model_wrapper_cfg') or ConfigDict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper_type = MODEL_WRAPPERS.get(wrapper.get('type', 'MMDistributedDataParallel'))
    if isinstance(wrapper_type, type) and issubclass(wrapper_type, DistributedDataParallel):
        wrapper.setdefault('device_ids', None)
    cfg.model_wrapper_cfg = wrapper
    if set_in_dicts_of_type(cfg.model, SYNC_BN_TYPES, 'type', 'BN'):
        print_log('SyncBN needs CUDA: training on the CPU with BN instead (per-rank batch '
                  'statistics).', logger='current', level=logging.WARNING)


def main() -> None:
    args = parse_args()

    cfg = load_config(args)
    default_work_dir(cfg, args.work_dir, args.config)

    if args.amp:
        enable_amp(cfg)
    if args.resume is not None:
        set_resume(cfg, args.resume)
    setup_distributed(cfg)

    # weights_only=True for --resume, load_from and init_cfg Pretrained alike;
    # mmengine's own training checkpoints are allowlisted, nothing else is.
    with safe_checkpoint_loading():
        if 'runner_type' not in cfg:
            runner = Runner.from_cfg(cfg)
        else:
            runner = RUNNERS.build(cfg)
        runner.train()
    shutdown_distributed()


if __name__ == '__main__':
    main()

"""Train a segmenter (e.g. on pseudo masks) with mmengine's Runner.

The interface of mmsegmentation 1.2.2's ``tools/train.py``, plus:

* ``import tagclip_mmseg`` registers the plugin's models and datasets (every
  config also lists it in ``custom_imports``);
* every checkpoint (``--resume``, ``load_from``, ``init_cfg`` Pretrained) is
  loaded with ``weights_only=True``; mmengine's own training checkpoints still
  resume because exactly their data types are allowlisted (docs/compatibility.md trap 6;
  see ``tagclip_mmseg/engine/checkpoint_compat.py``). A file that would run
  code when unpickled is refused;
* ``--resume`` optionally takes a checkpoint path; bare ``--resume`` resumes
  from the last checkpoint of the work dir, as in mmseg.

Examples::

    python tools/train.py configs/deeplab/CONFIG.py
    python tools/train.py configs/deeplab/CONFIG.py --resume       # after preemption
    bash tools/dist_train.sh configs/deeplab/CONFIG.py 4 --amp
"""
import argparse
import logging
import os.path as osp

from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner import Runner
from mmseg.registry import RUNNERS

import tagclip_mmseg  # noqa: F401  (registers the plugin)
from tagclip_mmseg.engine import safe_checkpoint_loading
from tagclip_mmseg.utils import add_runner_args, default_work_dir, load_config, parse_runner_args


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
                                    'path, or --resume alone to use the work dir\'s latest.')
        cfg.resume = True
        cfg.load_from = resume


def main() -> None:
    args = parse_args()

    cfg = load_config(args)
    default_work_dir(cfg, args.work_dir, args.config)

    if args.amp:
        enable_amp(cfg)
    if args.resume is not None:
        set_resume(cfg, args.resume)

    # weights_only=True for --resume, load_from and init_cfg Pretrained alike;
    # mmengine's own training checkpoints are allowlisted, nothing else is.
    with safe_checkpoint_loading():
        if 'runner_type' not in cfg:
            runner = Runner.from_cfg(cfg)
        else:
            runner = RUNNERS.build(cfg)
        runner.train()


if __name__ == '__main__':
    main()

"""Test (and evaluate) a model: trained segmenters and training-free models.

The interface of mmsegmentation 1.2.2's ``tools/test.py`` with three changes:

* ``checkpoint`` is optional. Training-free models (the TagCLIP tagger, the
  CLIP-ES pseudo-labeler, ``TagCLIPSegmentor``) load their frozen CLIP in
  ``__init__`` and have no checkpoint of their own, so without the argument
  ``cfg.load_from`` is left as the config sets it (usually None). Given to a
  model without trainable weights it is refused, pointing at
  ``--clip-checkpoint`` (it would be ignored with a key-mismatch warning).
* ``import tagclip_mmseg`` registers the plugin (every config also lists it
  in ``custom_imports``); ``CHECKPOINT`` is loaded with ``weights_only=True``
  (see ``tagclip_mmseg/engine/checkpoint_compat.py``), so a file that would run
  code when unpickled is refused.
* Distributed runs default to ``model_wrapper_cfg =
  MMSeparateDistributedDataParallel``. Plain DDP refuses a module without any
  trainable parameter (docs/compatibility.md, "Traps": DDP of a training-free
  model), which is exactly what a frozen CLIP model is; the separate wrapper
  only wraps children that have trainable parameters and forwards
  ``test_step`` to the model. Testing never synchronises gradients, so this is
  as correct for a trained segmenter. A ``model_wrapper_cfg`` in the config
  takes precedence.

Examples::

    python tools/test.py configs/deeplab/CONFIG.py work_dirs/CONFIG/iter_40000.pth
    python tools/test.py configs/tagclip/CONFIG.py            # training-free
    python tools/test.py configs/open_vocab/tagclip_vit-b16_voc21.py \
        --classes cls_voc21.txt --background-line             # the peers' name file
    bash tools/dist_test.sh configs/deeplab/CONFIG.py CKPT 4 --out preds/
"""
import argparse
import os.path as osp

from mmengine.config import Config, ConfigDict
from mmengine.runner import Runner
from mmseg.registry import MODELS
from torch import nn

import tagclip_mmseg  # noqa: F401  (registers the plugin)
from tagclip_mmseg.engine import safe_checkpoint_loading
from tagclip_mmseg.models.clip.presets import resolve_background
from tagclip_mmseg.utils import (add_runner_args, add_vocabulary_args, apply_vocabulary_args,
                                 default_work_dir, init_cpu_distributed, load_config,
                                 parse_runner_args, set_clip_checkpoint, shutdown_distributed)
from tagclip_mmseg.utils.fetch import CHECKPOINT_HELP

#: Wrapper for distributed testing that accepts fully frozen models.
FROZEN_SAFE_WRAPPER = dict(
    type='MMSeparateDistributedDataParallel',
    broadcast_buffers=False,
    find_unused_parameters=False)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='MMSeg test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument(
        'checkpoint', nargs='?', default=None,
        help='checkpoint file; omit it for training-free models')
    parser.add_argument(
        '--work-dir',
        help='if specified, the evaluation metric results will be dumped into the directory '
        'as json')
    parser.add_argument(
        '--out', type=str,
        help='the directory to save output predictions (index PNGs) for offline evaluation')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory where painted images will be saved. If specified, it will be '
        'automatically saved to the work_dir/timestamp/show_dir')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    add_runner_args(parser)
    parser.add_argument('--tta', action='store_true', help='Test time augmentation')
    parser.add_argument(
        '--clip-checkpoint',
        help=f'{CHECKPOINT_HELP}, for training-free configs (sets every '
        "model.*.clip.checkpoint; default: the config's, usually ~/.cache/clip/ViT-B-16.pt)")
    add_vocabulary_args(parser)
    return parse_runner_args(parser)


def trigger_visualization_hook(cfg: Config, args: argparse.Namespace) -> Config:
    """Turn on the visualization hook for ``--show`` / ``--show-dir``."""
    default_hooks = cfg.get('default_hooks') or {}
    if 'visualization' not in default_hooks:
        raise RuntimeError(
            '--show/--show-dir need a visualization hook in default_hooks, e.g. '
            "default_hooks = dict(visualization=dict(type='SegVisualizationHook'))")
    hook = default_hooks['visualization']
    hook['draw'] = True
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        cfg.visualizer['save_dir'] = args.show_dir
    return cfg


def set_output_dir(cfg: Config, out: str) -> None:
    """Make the (single) test metric keep and save its predictions in ``out``."""
    evaluator = cfg.test_evaluator
    if not isinstance(evaluator, (dict, ConfigDict)):
        raise ValueError(
            '--out needs a single test_evaluator (a dict such as IoUMetric); this config '
            f'has {type(evaluator).__name__}. Set output_dir on the metric with --cfg-options '
            'instead.')
    evaluator['output_dir'] = out
    evaluator['keep_results'] = True


def refuse_checkpoint_without_weights(model: nn.Module, checkpoint: str) -> None:
    """Refuse a positional checkpoint for a model that has nothing to load it into.

    Raises:
        ValueError: When no parameter of ``model`` (unwrapped) is trainable:
            the file would be ignored, and the run would compute with the
            config's CLIP.
    """
    model = getattr(model, 'module', model)
    if any(p.requires_grad for p in model.parameters()):
        return
    raise ValueError(
        f'checkpoint {checkpoint!r} was given, but {type(model).__name__} is training-free: it '
        'has no trainable weights to load it into, and would run with the CLIP of its config. '
        f'For other CLIP weights use --clip-checkpoint {checkpoint} (or --cfg-options '
        'model.clip.checkpoint=...); otherwise leave the checkpoint out.')


def main() -> None:
    args = parse_args()

    cfg = load_config(args)
    default_work_dir(cfg, args.work_dir, args.config)

    if args.checkpoint is not None:
        if not osp.isfile(args.checkpoint):
            raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist; omit the '
                                    'argument for training-free models.')
        cfg.load_from = args.checkpoint

    if args.clip_checkpoint is not None and not set_clip_checkpoint(cfg, args.clip_checkpoint):
        raise ValueError(f'--clip-checkpoint was given but {args.config} has no CLIP model')
    vocabulary = apply_vocabulary_args(cfg, args, MODELS, resolve_background)
    if vocabulary:
        print(vocabulary, flush=True)
    # CPU-only machines: torchrun + --launcher pytorch starts gloo here
    # (docs/compatibility.md, "Traps": launchers without a GPU).
    cfg.launcher = init_cpu_distributed(cfg.launcher)

    if args.launcher != 'none' and cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(FROZEN_SAFE_WRAPPER)

    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)

    if args.tta:
        if 'tta_pipeline' not in cfg or 'tta_model' not in cfg:
            raise ValueError('--tta needs `tta_pipeline` and `tta_model` in the config.')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model

    if args.out is not None:
        set_output_dir(cfg, args.out)

    with safe_checkpoint_loading():  # weights_only=True; see checkpoint_compat
        runner = Runner.from_cfg(cfg)
        if args.checkpoint is not None:
            refuse_checkpoint_without_weights(runner.model, args.checkpoint)
        runner.test()
    shutdown_distributed()


if __name__ == '__main__':
    main()

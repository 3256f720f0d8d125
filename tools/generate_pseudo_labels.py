"""Generate CLIP-ES pseudo masks for a dataset, resumably, on one or many GPUs.

Examples::

    # one process
    python tools/generate_pseudo_labels.py \
        configs/pseudo_labelers/clip-es_vit-b16_voc12-val_tagclip-tags.py \
        --out work_dirs/pseudo_labels/voc12_val

    # eight GPUs (same flags after the config)
    torchrun --nproc_per_node 8 tools/generate_pseudo_labels.py CONFIG --out DIR \
        --launcher pytorch   # or srun ... --launcher slurm

A killed or preempted run started again with the same ``--out`` skips every
image whose PNG is already complete (files are written atomically, so a PNG
that exists is whole) and has the image's size, and writes the rest. The
folder records the settings of its masks (``OUT/settings.json``); a run with
other settings (tags file, vocabulary, layers, CRF, weights, ...) stops
before computing anything and says what changed: pass ``--overwrite`` to
recompute every mask, or choose a new ``--out``.
"""
import argparse
import os.path as osp
import time

from mmengine.config import Config
from mmengine.runner import Runner
from mmseg.registry import DATASETS, MODELS

import tagclip_mmseg  # noqa: F401  (registers everything)
from tagclip_mmseg.engine import safe_checkpoint_loading
from tagclip_mmseg.evaluation.summary import format_summary
from tagclip_mmseg.models.clip.presets import resolve_background
from tagclip_mmseg.utils import (add_runner_args, add_vocabulary_args, apply_vocabulary_args,
                                 ensure_writable_dir, init_cpu_distributed, load_config,
                                 parse_runner_args, set_clip_checkpoint, set_in_dicts_of_type,
                                 shutdown_distributed, type_accepts)
from tagclip_mmseg.utils.fetch import CHECKPOINT_HELP

WRITERS = ['PseudoLabelWriter']
RESUME_TRANSFORMS = ['SkipExisting']
LOADERS = ['LoadImageRobust']


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Write pseudo masks (PNG) for a dataset')
    parser.add_argument('config', help='pseudo-label config (configs/pseudo_labelers/...)')
    parser.add_argument('--out', required=True, help='output folder of the PNG masks')
    parser.add_argument('--clip-checkpoint', help=f"{CHECKPOINT_HELP} (default: the config's, "
                        'usually ~/.cache/clip/ViT-B-16.pt)')
    parser.add_argument('--tags', help='tags file ("image_id idx idx ..."), for configs whose '
                        "dataset has tag_source='file'")
    parser.add_argument('--on-error', choices=['skip', 'raise'],
                        help='unreadable or missing images: count and skip (default) or stop '
                        "(sets the loader's on_error and the dataset's on_missing)")
    parser.add_argument('--overwrite', '--no-resume', dest='overwrite', action='store_true',
                        help='recompute every mask, also those already in --out (needed to '
                        'reuse a folder with other settings: tags, vocabulary, layers, CRF, '
                        'weights...)')
    parser.add_argument('--save-cams', action='store_true', help='also save CAM arrays (.npy)')
    parser.add_argument('--work-dir', help='folder for logs (default: OUT/logs)')
    add_runner_args(parser)
    add_vocabulary_args(parser)
    return parse_runner_args(parser)


def configure(cfg: Config, args: argparse.Namespace) -> Config:
    """Apply the command-line flags to every place of the config they touch."""
    out = ensure_writable_dir(args.out)
    if not set_in_dicts_of_type(cfg, WRITERS, 'out_dir', out):
        raise ValueError(f'{args.config} has no PseudoLabelWriter in test_evaluator; '
                         'use a config from configs/pseudo_labelers/')
    set_in_dicts_of_type(cfg, RESUME_TRANSFORMS, 'out_dir', out)
    if args.overwrite:
        # SkipExisting wraps the loading and resizing transforms: keep those.
        pipeline = []
        for t in cfg.test_dataloader.dataset.pipeline:
            if t.get('type', '').split('.')[-1] in RESUME_TRANSFORMS:
                pipeline.extend(t.get('transforms', []))
            else:
                pipeline.append(t)
        cfg.test_dataloader.dataset.pipeline = pipeline
    if args.save_cams:
        set_in_dicts_of_type(cfg, WRITERS, 'save_cams', True)
        cfg.model.return_cams = True
    if args.on_error:
        set_in_dicts_of_type(cfg, LOADERS, 'on_error', args.on_error)
        # Images the dataset lists but cannot find never reach the loader.
        dataset = cfg.test_dataloader.dataset
        if type_accepts(DATASETS, dataset.get('type'), 'on_missing'):
            dataset.on_missing = args.on_error
    if args.tags:
        if not osp.isfile(args.tags):
            raise FileNotFoundError(f'tags file {args.tags!r} does not exist; write one with '
                                    'tools/test.py on a configs/tagclip/ config')
        cfg.test_dataloader.dataset.tags_file = args.tags
        cfg.test_dataloader.dataset.tag_source = 'file'
    if args.clip_checkpoint:
        set_clip_checkpoint(cfg, args.clip_checkpoint)
    vocabulary = apply_vocabulary_args(cfg, args, MODELS, resolve_background)
    if vocabulary:
        print(vocabulary, flush=True)
    cfg.launcher = init_cpu_distributed(args.launcher)
    cfg.work_dir = args.work_dir or osp.join(out, 'logs')
    return cfg


def main() -> None:
    args = parse_args()
    cfg = configure(load_config(args), args)
    with safe_checkpoint_loading():  # weights_only=True; see checkpoint_compat
        runner = Runner.from_cfg(cfg)
        start = time.time()
        metrics = runner.test()
    if runner.rank == 0:
        counts = {k.split('/', 1)[1]: v for k, v in (metrics or {}).items()
                  if k.startswith('pseudo_label/')}
        print(format_summary(counts, time.time() - start), flush=True)
    shutdown_distributed()


if __name__ == '__main__':
    main()

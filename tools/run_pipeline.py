r"""Run the whole pipeline for one dataset: tags -> pseudo masks -> segmenter -> mIoU.

Each step runs one of the project's tools in a subprocess and is skipped when
its output already exists, so the same command line can simply be started
again after a crash or preemption; the step that was interrupted resumes
(pseudo-label generation skips finished PNGs, training resumes from its last
checkpoint).

========  ================================================  ===========================
step      command                                           done when
========  ================================================  ===========================
tags      ``tools/test.py TAG_CONFIG``                      the tags file exists
pseudo    ``tools/generate_pseudo_labels.py PSEUDO_CONFIG``  ``PSEUDO_DIR/summary.json``
train     ``tools/train.py SEG_CONFIG --resume``            the last checkpoint is the
                                                            final iteration
eval      ``tools/test.py SEG_CONFIG CHECKPOINT``           ``WORK_DIR/metrics.json``
========  ================================================  ===========================

Outputs under ``--work-dir``: ``tags.txt`` (unless ``--tags-file``),
``pseudo_labels/`` (unless ``--pseudo-dir``), ``train_ids.txt`` (the images
that have a pseudo mask; the segmenter trains on exactly these),
``segmenter/`` (checkpoints and logs), ``metrics.json`` (the test metrics)
and ``logs/`` (the tagging and test runs).

Without ``--tag-config`` the tag step is skipped: the pseudo-label config then
takes its class labels from its dataset (e.g. ground-truth image labels), or
from an existing ``--tags-file``.

Example::

    python tools/run_pipeline.py --work-dir work_dirs/pipeline/voc12 \
        --tag-config configs/tagclip/TAG.py \
        --pseudo-config configs/pseudo_labelers/PSEUDO.py \
        --seg-config configs/deeplab/DEEPLAB.py \
        --gpus 4

with e.g. ``DEEPLAB = deeplabv2_r101-d8-msc_1xb5-accum2-20k_voc12aug-pseudo-321x321``.
"""
import argparse
import glob
import json
import os
import os.path as osp
import shlex
import subprocess
import sys
from typing import Callable, List, NamedTuple, Optional, Sequence

from mmengine.config import Config

from tagclip_mmseg.utils import (add_vocabulary_args, atomic_write_text, ensure_writable_dir,
                                 iter_dicts, vocabulary_args_to_argv)
from tagclip_mmseg.utils.fetch import CHECKPOINT_HELP

TOOLS = osp.dirname(osp.abspath(__file__))
STEPS = ('tags', 'pseudo', 'train', 'eval')


class Step(NamedTuple):
    """One stage: ``done()`` says whether its output exists; ``run()`` makes it."""
    name: str
    done: Callable[[], bool]
    run: Callable[[], None]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='tags -> pseudo masks -> segmenter training -> evaluation, resumable')
    parser.add_argument('--work-dir', required=True, help='folder of every output')
    parser.add_argument('--tag-config', help='TagCLIP config (configs/tagclip/); omit to '
                        'skip tagging')
    parser.add_argument('--pseudo-config', required=True,
                        help='pseudo-label config (configs/pseudo_labelers/)')
    parser.add_argument('--seg-config', required=True, help='segmenter config (configs/deeplab/)')
    parser.add_argument('--tags-file', help='tags file (default: WORK_DIR/tags.txt)')
    parser.add_argument('--pseudo-dir', help='pseudo-mask folder (default: '
                        'WORK_DIR/pseudo_labels)')
    parser.add_argument('--clip-checkpoint',
                        help=f'{CHECKPOINT_HELP}, for tagging and pseudo labels')
    parser.add_argument('--gpus', type=int, default=1,
                        help="processes per step (torchrun when > 1). The segmenter config's "
                        'batch size is per GPU: the DeepLab-v2 recipe is for one GPU, so adapt '
                        'it with --train-options when training on several')
    parser.add_argument('--port', type=int, default=29500, help='torchrun master port')
    for step in ('tag', 'pseudo', 'train', 'test'):
        parser.add_argument(f'--{step}-options', nargs='+', default=[], metavar='KEY=VALUE',
                            help=f'extra --cfg-options of the {step} run')
    parser.add_argument('--steps', nargs='+', choices=STEPS, default=list(STEPS),
                        help='run only these steps (others must already be done)')
    parser.add_argument('--dry-run', action='store_true',
                        help='print what would run, run nothing')
    add_vocabulary_args(parser)  # passed on to the tags and pseudo steps
    args = parser.parse_args(argv)
    if args.gpus < 1:
        parser.error('--gpus must be >= 1')
    return args


def tool_command(script: str, args: Sequence[str], gpus: int, port: int) -> List[str]:
    """``python tools/<script> args``, or its torchrun form for several GPUs."""
    path = osp.join(TOOLS, script)
    if gpus == 1:
        return [sys.executable, path, *args]
    return [
        sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={gpus}',
        f'--master_port={port}', path, *args, '--launcher', 'pytorch'
    ]


def writer_key(config: str, writer_type: str, field: str) -> str:
    """The ``--cfg-options`` key of ``field`` of the ``writer_type`` test metric.

    Raises:
        ValueError: If the config's ``test_evaluator`` has no such metric.
    """
    evaluator = Config.fromfile(config).get('test_evaluator')
    metrics = evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]
    for index, metric in enumerate(metrics):
        if any(str(d.get('type', '')).split('.')[-1] == writer_type for d in iter_dicts(metric)):
            prefix = 'test_evaluator' if metrics is not evaluator else f'test_evaluator.{index}'
            return f'{prefix}.{field}'
    raise ValueError(f'{config} has no {writer_type} in its test_evaluator; pass a config that '
                     f'writes its results with {writer_type}.')


def final_iteration(seg_config: str, options: Sequence[str]) -> int:
    """``train_cfg.max_iters`` of the segmenter config after ``options``."""
    cfg = Config.fromfile(seg_config)
    for option in options:
        key, _, value = option.partition('=')
        if key == 'train_cfg.max_iters':
            return int(value)
    return int(cfg.train_cfg.max_iters)


def training_finished(seg_dir: str, max_iters: int) -> bool:
    """Whether the work dir's last checkpoint is that of the final iteration."""
    pointer = osp.join(seg_dir, 'last_checkpoint')
    if not osp.isfile(pointer):
        return False
    with open(pointer) as f:
        last = f.read().strip()
    return osp.basename(last) == f'iter_{max_iters}.pth' and osp.isfile(last)


def write_train_ids(pseudo_dir: str, path: str) -> int:
    """List the images that have a pseudo mask (PNG stems, sorted) in ``path``.

    Images whose generation failed have no PNG; training on this list instead
    of the dataset's split file keeps them out rather than crashing the loader.

    Returns:
        int: The number of images listed.

    Raises:
        FileNotFoundError: If ``pseudo_dir`` holds no PNG.
    """
    ids = sorted(osp.splitext(osp.basename(p))[0]
                 for p in glob.glob(osp.join(pseudo_dir, '*.png')))
    if not ids:
        raise FileNotFoundError(f'no pseudo masks (*.png) in {pseudo_dir}; run the pseudo step')
    atomic_write_text(path, ''.join(i + '\n' for i in ids))
    return len(ids)


def newest_test_metrics(log_dir: str) -> dict:
    """Metrics of the newest test run in ``log_dir`` (mmengine's ``<ts>/<ts>.json``)."""
    runs = sorted(p for p in glob.glob(osp.join(log_dir, '*', '*.json'))
                  if osp.basename(osp.dirname(p)) == osp.splitext(osp.basename(p))[0])
    if not runs:
        raise FileNotFoundError(f'the test run wrote no metrics file under {log_dir}')
    with open(runs[-1]) as f:
        return json.load(f)


def cfg_options(options: Sequence[str]) -> List[str]:
    return ['--cfg-options', *options] if options else []


def execute(command: List[str], dry_run: bool) -> None:
    print('+ ' + ' '.join(shlex.quote(c) for c in command), flush=True)
    if not dry_run:
        subprocess.run(command, check=True)


def build_steps(args: argparse.Namespace) -> List[Step]:
    """The four steps with their output checks and commands."""
    work_dir = osp.abspath(args.work_dir)
    tags_file = osp.abspath(args.tags_file or osp.join(work_dir, 'tags.txt'))
    pseudo_dir = osp.abspath(args.pseudo_dir or osp.join(work_dir, 'pseudo_labels'))
    seg_dir = osp.join(work_dir, 'segmenter')
    ids_file = osp.join(work_dir, 'train_ids.txt')
    metrics_file = osp.join(work_dir, 'metrics.json')
    eval_logs = osp.join(work_dir, 'logs', 'eval')
    gpus, port, dry = args.gpus, args.port, args.dry_run
    train_options = [
        f'train_dataloader.dataset.data_prefix.seg_map_path={pseudo_dir}',
        f'train_dataloader.dataset.ann_file={ids_file}', *args.train_options
    ]
    max_iters = final_iteration(args.seg_config, train_options)
    vocabulary = vocabulary_args_to_argv(args)

    def run_tags() -> None:
        if not args.tag_config:
            raise FileNotFoundError(f'tags file {tags_file} does not exist and no --tag-config '
                                    'was given to write it.')
        options = [f'{writer_key(args.tag_config, "TagFileWriter", "out_file")}={tags_file}',
                   *args.tag_options]
        if args.clip_checkpoint:
            options.append(f'model.clip.checkpoint={args.clip_checkpoint}')
        execute(tool_command('test.py', [
            args.tag_config, '--work-dir', osp.join(work_dir, 'logs', 'tags'), *vocabulary,
            *cfg_options(options)], gpus, port), dry)

    def run_pseudo() -> None:
        extra = ['--tags', tags_file] if (args.tag_config or args.tags_file) else []
        if args.clip_checkpoint:
            extra += ['--clip-checkpoint', args.clip_checkpoint]
        execute(tool_command('generate_pseudo_labels.py', [
            args.pseudo_config, '--out', pseudo_dir, *extra, *vocabulary,
            *cfg_options(args.pseudo_options)], gpus, port), dry)

    def run_train() -> None:
        if not dry:
            print(f'{write_train_ids(pseudo_dir, ids_file)} images with pseudo masks '
                  f'listed in {ids_file}', flush=True)
        execute(tool_command('train.py', [
            args.seg_config, '--work-dir', seg_dir, '--resume',
            *cfg_options(train_options)], gpus, port), dry)

    def run_eval() -> None:
        checkpoint = osp.join(seg_dir, f'iter_{max_iters}.pth')
        execute(tool_command('test.py', [
            args.seg_config, checkpoint, '--work-dir', eval_logs,
            *cfg_options(args.test_options)], gpus, port), dry)
        if not dry:
            metrics = newest_test_metrics(eval_logs)
            atomic_write_text(metrics_file, json.dumps(metrics, indent=1) + '\n')
            print(f'metrics: {metrics} (saved to {metrics_file})', flush=True)

    return [
        Step('tags', lambda: osp.isfile(tags_file) or not args.tag_config, run_tags),
        Step('pseudo', lambda: osp.isfile(osp.join(pseudo_dir, 'summary.json')), run_pseudo),
        Step('train', lambda: training_finished(seg_dir, max_iters), run_train),
        Step('eval', lambda: osp.isfile(metrics_file), run_eval),
    ]


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    ensure_writable_dir(args.work_dir)
    for step in build_steps(args):
        if step.done():
            print(f'[{step.name}] output exists, skipped', flush=True)
        elif step.name not in args.steps:
            raise RuntimeError(f'step {step.name!r} is not done and not in --steps; add it.')
        else:
            print(f'[{step.name}] running', flush=True)
            step.run()


if __name__ == '__main__':
    os.environ.setdefault('PYTHONUNBUFFERED', '1')
    main()

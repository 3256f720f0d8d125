"""The command line: options, the default and ``--tiny`` profiles, and the run."""
import argparse
import gc
import os
import platform
import re
import tempfile
from typing import Optional, Sequence

import torch

from .batching import run_batching
from .cams import cam_fns, report_cams
from .crf import run_crf
from .e2e import run_e2e
from .inputs import (TINY_ARCH, build_labeler, build_tagger, make_checkpoint, parse_size,
                     random_images, size_label)
from .memory import PROBES, probe_main, run_memory
from .prompts import run_prompts
from .tagging import report_tagging, tagging_fns
from .timer import Bench

__all__ = ['PARTS', 'PROFILES', 'parse_size', 'parse_args', 'main']

#: Every part; those of ``OPT_IN`` (the per-image reference at the large size,
#: about a minute per image on two CPU cores) run only when named.
PARTS = ('backbone', 'tag', 'cam', 'large', 'memory', 'prompts', 'batching', 'crf', 'e2e',
         'large-faithful')
OPT_IN = ('large-faithful', )
_PATCH = TINY_ARCH['vision_patch_size']
#: Defaults of the sized options: the documented figures, and the smoke run
#: (``--tiny``: the tiny random CLIP, a few of its patches per side).
PROFILES = {
    'full': dict(size=(384, 512), large_size=(900, 1352), batch_sizes=(1, 8),
                 crf_size=(375, 500), crf_images=8, e2e_size=(375, 500), e2e_images=16,
                 e2e_batch_size=8, loader_workers=2, repeats=3, prompt_templates=10),
    'tiny': dict(size=(4 * _PATCH, 6 * _PATCH), large_size=(6 * _PATCH, 8 * _PATCH),
                 batch_sizes=(1, 2), crf_size=(3 * _PATCH, 4 * _PATCH), crf_images=4,
                 e2e_size=(60, 80), e2e_images=4, e2e_batch_size=2, loader_workers=1,
                 repeats=1, prompt_templates=2),
}


def _profiled(parser, flag: str, help: str, **kwargs) -> None:
    """Add an option whose default comes from :data:`PROFILES`."""
    key = flag[2:].replace('-', '_')

    sep = 'x' if key.endswith('size') else ' '
    full, tiny = (sep.join(map(str, v)) if isinstance(v, tuple) else str(v)
                  for v in (PROFILES['full'][key], PROFILES['tiny'][key]))
    parser.add_argument(flag, default=argparse.SUPPRESS,
                        help=f'{help} (default: {full}; --tiny: {tiny})', **kwargs)


def _add_figure_args(parser: argparse.ArgumentParser) -> None:
    from tagclip_mmseg.utils.cli import add_quirks_args
    size = dict(type=parse_size, metavar='HxW')
    _profiled(parser, '--size', 'working image size (rounded up to the patch size)', **size)
    _profiled(parser, '--large-size', 'image size of the "large" and "memory" figures', **size)
    parser.add_argument('--batch-size', type=int, default=1, help='images per batch')
    parser.add_argument('--device', default='cpu', help="'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument('--dtype', default='fp32', choices=['fp32', 'fp16', 'bf16'],
                        help='dtype of the CLIP weights')
    parser.add_argument('--autocast', choices=['fp16', 'bf16'],
                        help='run every timed function under torch.autocast')
    parser.add_argument('--no-faithful', action='store_true',
                        help='skip the faithful per-image references (and the speed-ups)')
    add_quirks_args(parser)  # the per-image references follow the same quirks
    _profiled(parser, '--repeats', 'timed runs per figure', type=int)
    parser.add_argument('--statistic', default='median', choices=['median', 'min'],
                        help='summary of the timed runs ("min" on a busy machine)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed runs before timing')
    parser.add_argument('--parts', nargs='+', choices=PARTS,
                        default=[p for p in PARTS if p not in OPT_IN], help='figures to measure')
    parser.add_argument('--cam-tags', type=int, nargs=2, default=(2, 6), metavar=('FEW', 'MANY'),
                        help='tag counts of the CAM figures')
    parser.add_argument('--full-prompts', action='store_true',
                        help='time the first launch on the full VOC vocabulary (3,825 prompts)')


def _add_part_args(parser: argparse.ArgumentParser) -> None:
    size = dict(type=parse_size, metavar='HxW')
    _profiled(parser, '--batch-sizes', 'batch sizes of the "batching" part', type=int,
              nargs='+')
    _profiled(parser, '--crf-size', 'image size of the "crf" part', **size)
    parser.add_argument('--crf-classes', type=int, default=4,
                        help='CRF channels: background + tags')
    _profiled(parser, '--crf-images', 'images per timed CRF run', type=int)
    parser.add_argument('--crf-workers', type=int, nargs='+', default=(1, 2),
                        help='worker-process counts of the "crf" part')
    _profiled(parser, '--e2e-size', 'photo size of the "e2e" part', **size)
    _profiled(parser, '--e2e-images', 'photos of the larger "e2e" run (the other: half)',
              type=int)
    _profiled(parser, '--e2e-batch-size', 'test_dataloader batch size of the "e2e" part',
              type=int)
    _profiled(parser, '--loader-workers', 'data-loader workers of the "e2e" part', type=int)


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.batch_size < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error('--batch-size and --repeats must be >= 1 and --warmup >= 0')
    if min(args.batch_sizes) < 1 or min(args.crf_workers) < 1 or args.crf_images < 1:
        parser.error('--batch-sizes, --crf-workers and --crf-images must be >= 1')
    if args.crf_classes < 2:
        parser.error('--crf-classes must be >= 2 (background and at least one tag)')
    if args.e2e_images < 2 or args.e2e_batch_size < 1 or args.loader_workers < 0:
        parser.error('--e2e-images must be >= 2, --e2e-batch-size >= 1, --loader-workers >= 0')
    if not 1 <= args.cam_tags[0] < args.cam_tags[1] <= 20:
        parser.error('--cam-tags FEW MANY needs 1 <= FEW < MANY <= 20 (the VOC vocabulary)')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line; unset sized options take their profile's default."""
    from tagclip_mmseg.utils.cli import quirks_from_args
    parser = argparse.ArgumentParser(
        description='Benchmark the fast TagCLIP / CLIP-ES paths against the faithful ones',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_figure_args(parser)
    _add_part_args(parser)
    parser.add_argument('--threads', type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--tiny', action='store_true',
                        help='smoke run: tiny random CLIP, tiny images, 1 repeat')
    parser.add_argument('--work-dir', help='folder for the checkpoint and text cache '
                        '(default: a temporary folder, removed at the end)')
    # Internal: the memory figure runs in a child process.
    parser.add_argument('--probe', choices=PROBES, help=argparse.SUPPRESS)
    parser.add_argument('--checkpoint', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quirks_from_args(parser, args)
    for key, value in PROFILES['tiny' if args.tiny else 'full'].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    _check_args(parser, args)
    return args


def machine_line(bench: Bench, args: argparse.Namespace) -> str:
    """The first printed line: torch, device, load, precision, model and statistic."""
    if bench.device.type == 'cuda':
        where = torch.cuda.get_device_name(bench.device)
    else:
        cpu = platform.processor() or platform.machine()
        try:
            with open('/proc/cpuinfo') as f:
                m = re.search(r'^model name\s*:\s*(.+)$', f.read(), re.M)
            cpu = m.group(1) if m else cpu
        except OSError:
            pass
        where = f'{cpu}, {torch.get_num_threads()} threads, {os.cpu_count()} cores visible'
    arch = 'tiny random CLIP' if args.tiny else 'ViT-B/16-shaped random CLIP'
    load = ' | load avg %.1f %.1f %.1f' % os.getloadavg() if hasattr(os, 'getloadavg') else ''
    precision = args.dtype + (f' + {args.autocast} autocast' if args.autocast else '')
    return (f'# torch {torch.__version__} | {args.device}: {where}{load} | {precision} | '
            f'{arch} | quirks={args.quirks} | batch {args.batch_size} | {args.statistic} of '
            f'{args.repeats} round-robin runs')


def run_working_size(bench: Bench, tagger, ckpt: str, cache_dir: str) -> None:
    """The backbone, tagging and CAM figures at ``--size``, timed together."""
    args, parts, faithful = bench.args, set(bench.args.parts), not bench.args.no_faithful
    vit = tagger.clip.visual
    images = random_images(args, args.size, vit.patch_size, args.batch_size, bench.device,
                           tagger.clip.dtype)
    size = size_label(tuple(images.shape[-2:]), vit.patch_size)
    fns = {'backbone': torch.no_grad()(lambda: vit(images))}
    crops = 0
    if 'tag' in parts:
        tag_fns, crops = tagging_fns(tagger, images, '', faithful=faithful)
        fns.update(tag_fns)
    if 'cam' in parts:
        labeler = build_labeler(args, ckpt, cache_dir, bench.device)
        labeler.text_embeddings(labeler.class_names + labeler.background_words,
                                labeler.templates)
        fns.update(cam_fns(labeler, images, args.cam_tags, faithful=faithful))
    res = bench.measure(fns)
    bench.timing(f'backbone forward, {size}', res['backbone'], args.batch_size,
                 'fused attention, no maps')
    if 'tag' in parts:
        report_tagging(bench, res, '', size, args.batch_size, crops, tagger.cwr_crop_size)
    if 'cam' in parts:
        report_cams(bench, res, size, args.batch_size)


def run_large(bench: Bench, tagger) -> None:
    """The backbone and tagging figures at ``--large-size``."""
    args = bench.args
    vit = tagger.clip.visual
    large = random_images(args, args.large_size, vit.patch_size, args.batch_size, bench.device,
                          tagger.clip.dtype)
    size = size_label(tuple(large.shape[-2:]), vit.patch_size)
    fns = {'backbone@large': torch.no_grad()(lambda: vit(large))}
    tag_fns, crops = tagging_fns(tagger, large, '@large', faithful=not args.no_faithful
                                 and 'large-faithful' in args.parts)
    fns.update(tag_fns)
    res = bench.measure(fns)
    bench.timing(f'backbone forward, {size}', res['backbone@large'], args.batch_size,
                 'fused attention, no maps')
    report_tagging(bench, res, '@large', size, args.batch_size, crops, tagger.cwr_crop_size)


def run_all(args: argparse.Namespace, work_dir: str) -> None:
    """Measure and print every part of ``--parts``."""
    bench = Bench(args)
    torch.manual_seed(args.seed)
    ckpt = make_checkpoint(work_dir, args.tiny, args.seed)
    cache_dir = os.path.join(work_dir, 'text_cache')
    print(machine_line(bench, args), flush=True)
    parts = set(args.parts)
    tagger = build_tagger(args, ckpt, cache_dir, bench.device)
    tagger.classifier()  # text embeddings are a one-off cost, timed under 'prompts'
    patch, dtype = tagger.clip.visual.patch_size, tagger.clip.dtype
    if parts & {'backbone', 'tag', 'cam'}:
        run_working_size(bench, tagger, ckpt, cache_dir)
        gc.collect()
    if parts & {'large', 'large-faithful'}:
        run_large(bench, tagger)
    if 'batching' in parts:
        run_batching(bench, tagger, build_labeler(args, ckpt, cache_dir, bench.device), patch,
                     dtype)
        gc.collect()
    if 'e2e' in parts:
        run_e2e(bench, tagger, ckpt, work_dir, patch, dtype)
    if 'crf' in parts:
        run_crf(bench)
    if 'prompts' in parts:
        run_prompts(bench, tagger.clip, work_dir)
    del tagger
    gc.collect()
    if 'memory' in parts:
        run_memory(bench, ckpt, work_dir, patch)
    if hasattr(os, 'getloadavg'):
        print('# load avg at the end %.1f %.1f %.1f' % os.getloadavg())


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run the benchmark (or, with ``--probe``, one memory probe)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        probe_main(args)
        return
    import tagclip_mmseg  # noqa: F401  (registers the models)
    if args.work_dir:
        os.makedirs(args.work_dir, exist_ok=True)
        run_all(args, args.work_dir)
        return
    with tempfile.TemporaryDirectory(prefix='tagclip_benchmark_') as work_dir:
        run_all(args, work_dir)

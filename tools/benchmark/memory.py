"""Memory one large image adds above the loaded model, in a fresh process."""
import argparse
import json
import os.path as osp
import subprocess
import sys
import time

import torch

from .inputs import (ROOT, build_labeler, build_tagger, cam_samples, random_images, rounded,
                     size_label)
from .timer import GIB, Bench, MemoryMeter

__all__ = ['PROBES', 'run_memory', 'probe_main']

#: What a probe process runs (``--probe``).
PROBES = ('tag', 'cam', 'tag-faithful')
ENTRY = osp.join(ROOT, 'tools', 'benchmark.py')


def run_memory_probe(args: argparse.Namespace, what: str, ckpt: str, work_dir: str) -> dict:
    """Run :func:`probe_main` for ``what`` in a fresh process; returns its report."""
    cmd = [sys.executable, ENTRY, '--probe', what, '--checkpoint', ckpt,
           '--work-dir', work_dir, '--device', args.device, '--dtype', args.dtype, '--quirks',
           args.quirks, '--large-size', f'{args.large_size[0]}x{args.large_size[1]}', '--size',
           f'{args.size[0]}x{args.size[1]}', '--seed', str(args.seed)]
    if args.tiny:
        cmd.append('--tiny')
    if args.autocast:
        cmd += ['--autocast', args.autocast]
    if args.threads:
        cmd += ['--threads', str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{')]
    if proc.returncode or not lines:
        raise RuntimeError(f'memory probe {what!r} failed (exit {proc.returncode}):\n'
                           f'{proc.stderr[-2000:]}')
    return json.loads(lines[-1])


def probe_main(args: argparse.Namespace) -> None:
    """Child process: print (JSON) how much one large image adds to the memory in use."""
    device = torch.device(args.device)
    meter = MemoryMeter(device)
    cache_dir = osp.join(args.work_dir, 'text_cache')
    build = build_labeler if args.probe == 'cam' else build_tagger
    model = build(args, args.checkpoint, cache_dir, device)
    patch, dtype = model.clip.visual.patch_size, model.clip.dtype
    small = random_images(args, args.size, patch, 1, device, dtype)
    large = random_images(args, args.large_size, patch, 1, device, dtype)

    def run(images: torch.Tensor) -> None:
        with model.autocast_context(device):
            if args.probe == 'cam':
                model.predict(list(images), cam_samples(1, [0, 1], tuple(images.shape[-2:])))
            elif args.probe == 'tag':
                model.tag(images)
            else:
                from tagclip_mmseg.testing.reference import reference_tagclip
                with torch.no_grad():
                    reference_tagclip(model, images[0])

    run(small)
    meter.reset()
    base = meter.current()
    start = time.perf_counter()
    run(large)
    elapsed = time.perf_counter() - start
    print(json.dumps(dict(base=base, peak=meter.peak(), seconds=elapsed, what=meter.what,
                          resettable=meter.resettable)))


def run_memory(bench: Bench, ckpt: str, work_dir: str, patch: int) -> None:
    """Print the memory one ``--large-size`` image adds, per probe."""
    args = bench.args
    size = size_label(rounded(args.large_size, patch), patch)
    probes = [('tag', 'tag fast', 'memory_gib'), ('cam', 'CAMs fast, 2 tags', None)]
    if 'large-faithful' in args.parts and not args.no_faithful:
        probes.append(('tag-faithful', 'tag faithful (reference)', None))
    for what, name, target in probes:
        res = run_memory_probe(args, what, ckpt, work_dir)
        added = (res['peak'] - res['base']) / GIB
        bench.ratio(f'memory added by one image, {name}', added, target, unit='GiB',
                    detail=f'{size}; {res["what"]} {res["peak"] / GIB:.2f} GiB over '
                    f'{res["base"] / GIB:.2f} GiB with the model loaded')

"""Dense CRF at VOC size: in the process and in pools of worker processes."""
import os
import time
from typing import List, Tuple

import torch

from .inputs import demo_photos
from .timer import Bench

__all__ = ['run_crf']


def crf_inputs(bench: Bench, count: int) -> List[Tuple[torch.Tensor, object]]:
    """``count`` (probabilities, sample) pairs at ``--crf-size``, like upsampled CAMs."""
    import numpy as np
    import torch.nn.functional as F
    from mmseg.structures import SegDataSample
    from PIL import Image
    args = bench.args
    h, w = args.crf_size
    gen = torch.Generator().manual_seed(args.seed)
    photos = demo_photos()
    out = []
    for i in range(count):
        with Image.open(photos[i % len(photos)]) as img:
            rgb = np.asarray(img.convert('RGB').resize((w, h), Image.BICUBIC))
        low = torch.rand(1, args.crf_classes, 12, 16, generator=gen)
        probs = F.interpolate(low, size=(h, w), mode='bilinear', align_corners=False)[0]
        probs = probs / probs.sum(dim=0, keepdim=True)
        out.append((probs, SegDataSample(metainfo=dict(ori_img=rgb))))
    return out


def run_crf(bench: Bench) -> None:
    """Print CRF throughput in the process and per ``--crf-workers`` pool."""
    args = bench.args
    from tagclip_mmseg.models.pseudo_labelers.crf import DenseCRF, shutdown_crf_pools
    try:
        serial = DenseCRF()
    except ImportError as e:
        print(f'# crf: skipped ({str(e).splitlines()[0]})', flush=True)
        return
    inputs = crf_inputs(bench, args.crf_images)
    lut = torch.arange(args.crf_classes)
    n = len(inputs)

    def run_serial() -> None:
        for probs, sample in inputs:
            serial.label(probs, lut, sample)

    def run_pool(crf: DenseCRF) -> None:
        # As a labeler's predict does: submit the batch, then wait for it.
        pending = [crf.submit(probs, lut, sample) for probs, sample in inputs]
        for p in pending:
            p.result()

    pools = {k: DenseCRF(workers=k) for k in sorted(set(args.crf_workers))}
    try:
        startup = {}
        for k, crf in pools.items():  # worker start-up is not part of the figures
            start = time.perf_counter()
            probs, sample = inputs[0]
            crf.label(probs, lut, sample)
            startup[k] = time.perf_counter() - start
        fns = {'crf-serial': run_serial}
        fns.update({f'crf-w{k}': (lambda crf=crf: run_pool(crf)) for k, crf in pools.items()})
        res = bench.measure(fns)
    finally:
        shutdown_crf_pools()
    h, w = args.crf_size
    size = f'{w}x{h}, {args.crf_classes} classes, 10 iterations'
    bench.timing(f'dense CRF in process, {size}', res['crf-serial'], n)
    for k in pools:
        bench.timing(f'dense CRF, {k} worker process(es)', res[f'crf-w{k}'], n,
                     f'first image with worker start-up {startup[k]:.2f} s')
    ks = sorted(pools)
    base = res[f'crf-w{ks[0]}'].seconds
    for k in ks[1:]:
        bench.ratio(f'dense CRF images/s, {k} workers / {ks[0]}', base / res[f'crf-w{k}'].seconds,
                    'crf_scaling' if (k, ks[0]) == (2, 1) else None,
                    detail=f'{os.cpu_count()} cores visible')

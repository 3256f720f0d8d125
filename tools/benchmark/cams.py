"""CAMs: ``CLIPESPseudoLabeler.predict`` against the plain forward and the reference."""
from typing import Callable, Dict, Sequence

import torch

from .inputs import cam_samples
from .timer import Bench

__all__ = ['cam_fns', 'report_cams']


def cam_fns(labeler, images: torch.Tensor, tag_counts: Sequence[int],
            faithful: bool) -> Dict[str, Callable[[], object]]:
    """CAM functions to time, one per tag count (and per path with ``faithful``)."""
    from tagclip_mmseg.testing.reference import reference_cams
    B, hw = images.shape[0], tuple(images.shape[-2:])
    fns = {}
    for k in tag_counts:
        tags = list(range(k))
        fns[f'cam-fast-{k}'] = (
            lambda tags=tags: labeler.predict(list(images), cam_samples(B, tags, hw)))
        if faithful:
            fns[f'cam-faithful-{k}'] = (lambda tags=tags: [
                reference_cams(labeler, img, tags, hw) for img in images
            ])
    return fns


def report_cams(bench: Bench, res: dict, size: str, batch: int) -> None:
    """Print the CAM figures of :func:`cam_fns`' timings ``res`` (times per batch)."""
    few, many = bench.args.cam_tags
    base = res['backbone'].seconds
    for kind, name in (('fast', 'CAMs fast, {} tags (predict)'),
                       ('faithful', 'CAMs faithful, {} tags (reference)')):
        for k in (few, many):
            if f'cam-{kind}-{k}' in res:
                bench.timing(f'{name.format(k)}, {size}', res[f'cam-{kind}-{k}'], batch)
    fast = {k: res[f'cam-fast-{k}'].seconds for k in (few, many)}
    bench.ratio(f'CAMs fast {few} tags / backbone', fast[few] / base, 'cam_two_tags')
    per_tag = (fast[many] - fast[few]) / (many - few)
    bench.ratio('CAMs fast per extra tag / backbone', per_tag / base, 'cam_per_tag',
                detail=f'{per_tag / batch:.3f} s/img per tag, from {few} vs {many} tags')
    if f'cam-faithful-{few}' not in res:
        return
    ref = {k: res[f'cam-faithful-{k}'].seconds for k in (few, many)}
    ref_tag = (ref[many] - ref[few]) / (many - few)
    bench.ratio(f'CAMs faithful {few} tags / backbone', ref[few] / base)
    bench.ratio('CAMs faithful per extra tag / backbone', ref_tag / base,
                detail=f'{ref_tag / batch:.3f} s/img per tag')
    gpu = bench.device.type == 'cuda'
    for k in (few, many):
        bench.ratio(f'CAMs speed-up fast vs faithful, {k} tags', ref[k] / fast[k],
                    'gpu_cam_speedup' if gpu else None, detail='images/s ratio, same run')

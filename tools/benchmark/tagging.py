"""Tagging: the fast ``TagCLIP.tag`` against the plain forward and the reference."""
from typing import Callable, Dict, Tuple

import torch

from .targets import TARGETS
from .timer import Bench

__all__ = ['tagging_fns', 'report_tagging']


def tagging_fns(tagger, images: torch.Tensor, suffix: str,
                faithful: bool) -> Tuple[Dict[str, Callable[[], object]], int]:
    """Tagging functions to time, and the number of CWR crops per batch.

    Args:
        tagger (TagCLIP): The timed tagger.
        images (Tensor): The batch (B, 3, H, W).
        suffix (str): Appended to every name (``'@large'``).
        faithful (bool): Add the per-image reference.
    """
    from tagclip_mmseg.testing.reference import reference_tagclip
    crops = int(tagger.tag(images).cwr_done.sum())
    s = tagger.cwr_crop_size
    crop_batch = torch.zeros(max(crops, 1), 3, s, s, device=images.device, dtype=images.dtype)

    def without_cwr() -> None:
        tagger.cwr = False
        try:
            tagger.tag(images)
        finally:
            tagger.cwr = True

    fns = {f'tag-fast{suffix}': lambda: tagger.tag(images), f'tag-no-cwr{suffix}': without_cwr}
    if crops:
        fns[f'crops{suffix}'] = lambda: tagger.clip.visual(crop_batch)
    if faithful:
        fns[f'tag-faithful{suffix}'] = lambda: [reference_tagclip(tagger, img) for img in images]
    return fns, crops


def report_tagging(bench: Bench, res: dict, suffix: str, size: str, batch: int, crops: int,
                   crop_size: int) -> None:
    """Print the tagging figures of :func:`tagging_fns`' timings ``res``."""
    base = res[f'backbone{suffix}'].seconds
    fast = res[f'tag-fast{suffix}'].seconds
    target = 'tag_large' if suffix else 'tag'
    bench.timing(f'tag fast (TagCLIP.tag), {size}', res[f'tag-fast{suffix}'], batch,
                 f'{crops / batch:.1f} CWR crops/img')
    bench.timing(f'tag fast without CWR, {size}', res[f'tag-no-cwr{suffix}'], batch,
                 'coarse pass + DMAR')
    crop_time = res[f'crops{suffix}'].seconds if crops else 0.
    if crops:
        bench.timing(f'CWR crop forwards alone, {crops / batch:.1f} x {crop_size}px',
                     res[f'crops{suffix}'], batch, 'plain forward of the crop batch')
    faithful = res.get(f'tag-faithful{suffix}')
    if faithful:
        bench.timing(f'tag faithful (reference, per image), {size}', faithful, batch)
    bench.ratio(f'tag fast / backbone{suffix}', fast / base, target)
    bench.ratio(f'tag fast / (backbone + CWR crops){suffix}', fast / (base + crop_time),
                detail="the method's floor: one forward plus the crop forwards")
    no_cwr = res[f'tag-no-cwr{suffix}'].seconds
    bench.ratio(f'tag fast without CWR / backbone{suffix}', no_cwr / base)
    if crops:
        # The weights set the crop count; print how many crops the target
        # leaves room for, from the (stable) plain crop-forward time.
        per_crop = crop_time / crops / (base / batch)
        room = (TARGETS[target].value - no_cwr / base) / per_crop
        bench.ratio(f'tag fast, each CWR crop / backbone{suffix}', per_crop,
                    detail=f'plain crop forward; the target leaves room for '
                    f'{max(room, 0.):.1f} crops/img')
    if faithful:
        gpu = bench.device.type == 'cuda'
        bench.ratio(f'tag faithful / backbone{suffix}', faithful.seconds / base)
        bench.ratio(f'tag speed-up fast vs faithful{suffix}', faithful.seconds / fast,
                    'gpu_tag_speedup' if gpu else None, detail='images/s ratio, same run')

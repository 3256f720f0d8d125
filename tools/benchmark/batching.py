"""Per-image time of tagging and of CAMs at each ``--batch-sizes`` entry."""
from typing import Callable, Dict, List

import torch

from .inputs import cam_samples, random_images, size_label
from .timer import Bench

__all__ = ['run_batching']


def run_batching(bench: Bench, tagger, labeler, patch: int, dtype: torch.dtype) -> None:
    """Print tagging and CAM throughput per batch size, on the same images.

    Every batch size processes the same ``max(--batch-sizes)`` images through
    ``predict``, as a data loader's batches do (the models' device default
    ``images_per_forward``). One more line forces the largest batch through a
    single forward, to show what that default saves or costs on this device.
    """
    from mmpretrain.structures import DataSample
    args = bench.args
    sizes = sorted(set(args.batch_sizes))
    n = sizes[-1]
    images = random_images(args, args.size, patch, n, bench.device, dtype)
    hw = tuple(images.shape[-2:])
    size = size_label(hw, patch)
    tags = list(range(args.cam_tags[0]))

    def batches(model, make_samples):
        def run(chunks, per_forward=None):
            model.images_per_forward = per_forward
            try:
                return [model.predict(list(c), make_samples(c)) for c in chunks]
            finally:
                model.images_per_forward = None
        return run

    tag_batches = batches(tagger, lambda c: [DataSample() for _ in c])
    cam_batches = batches(labeler, lambda c: cam_samples(len(c), tags, hw))
    fns: Dict[str, Callable[[], object]] = {}
    for b in sizes:
        chunks = images.split(b)
        fns[f'tag-b{b}'] = lambda chunks=chunks: tag_batches(chunks)
        fns[f'cam-b{b}'] = lambda chunks=chunks: cam_batches(chunks)
    fns['tag-forced'] = lambda: tag_batches([images], n)
    fns['cam-forced'] = lambda: cam_batches([images], n)
    report_batching(bench, bench.measure(fns), sizes, size, len(tags),
                    tagger.forward_batch_size(bench.device, n))


def report_batching(bench: Bench, res: dict, sizes: List[int], size: str, tags: int,
                    per_forward: int) -> None:
    """Print :func:`run_batching`'s figures from its timings ``res``.

    Args:
        bench (Bench): The shared timer.
        res (dict): The timings of the batch sizes and the forced batch.
        sizes (list[int]): The batch sizes, ascending.
        size (str): The image size's label.
        tags (int): Tags per image of the CAMs.
        per_forward (int): Images per forward of the models' device default.
    """
    n = sizes[-1]
    for kind, name in (('tag', 'tag fast'), ('cam', f'CAMs fast, {tags} tags')):
        for b in sizes:
            bench.timing(f'{name}, batch {b}, {size}', res[f'{kind}-b{b}'], n,
                         f'{n // b} batch(es) of {b}, {min(per_forward, b)} image(s) per forward')
        bench.timing(f'{name}, batch {n} in one forward, {size}', res[f'{kind}-forced'], n,
                     f'images_per_forward={n}')
        one = res[f'{kind}-b{sizes[0]}'].seconds
        for b in sizes[1:]:
            bench.ratio(f'{name}, batch {b} / batch {sizes[0]} (s per image)',
                        res[f'{kind}-b{b}'].seconds / one, 'batch_per_image',
                        detail='batching never loses; 5% allowed for noise')
        bench.ratio(f'{name}, batch {n} in one forward / batch {sizes[0]} (s per image)',
                    res[f'{kind}-forced'].seconds / one,
                    detail='what the device default avoids (CPU) or gains (GPU)')

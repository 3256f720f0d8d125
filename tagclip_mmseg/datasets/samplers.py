"""Batch images of equal token grids together.

Padding would change the results, so images share a forward pass only when
their token grids are equal. In a config::

    test_dataloader = dict(
        batch_size=8,
        sampler=dict(type='GridGroupedSampler'),
        batch_sampler=dict(type='GridBatchSampler'),
        dataset=...)

Grids are predicted from image headers with the pipeline's settings; a wrong
prediction only mixes a batch, since the models group inputs by shape too.
"""
import logging
from typing import Dict, Iterator, List, Optional, Sized, Tuple

import torch
from mmengine.dist import get_dist_info, sync_random_seed
from mmengine.logging import print_log
from mmseg.registry import DATA_SAMPLERS
from torch.utils.data import Sampler

from ..utils.token_grid import group_indices
from .image_io import ImageLoadError
from .transforms import LoadImageRobust, ResizeToPatchMultiple, image_grid

__all__ = ['ImageGrids', 'GridGroupedSampler', 'GridBatchSampler']

Grid = Tuple[int, int]


def _pipeline_transform(dataset, cls):
    """The first ``cls`` instance in ``dataset.pipeline`` (or None).

    Transforms that wrap others in a ``transforms`` list (``SkipExisting``,
    ``SkipTagged``) are searched too, depth first.
    """
    def find(transforms):
        for t in transforms or ():
            if isinstance(t, cls):
                return t
            inner = getattr(t, 'transforms', None)
            found = find(inner) if isinstance(inner, (list, tuple)) else None
            if found is not None:
                return found
        return None

    return find(getattr(getattr(dataset, 'pipeline', None), 'transforms', None))


def _pick(name: str, given, from_pipeline, default):
    """An explicit setting, checked against the pipeline's, else the pipeline's."""
    if given is not None and from_pipeline is not None and given != from_pipeline:
        raise ValueError(f"{name}={given!r} differs from the dataset pipeline's "
                         f"{from_pipeline!r}; leave it unset to use the pipeline's value")
    if given is not None:
        return given
    return default if from_pipeline is None else from_pipeline


class ImageGrids:
    """The token grid of every dataset index, read once from image headers.

    Args:
        dataset (Sized): A dataset with ``get_data_info(idx)['img_path']``
            (every mmengine ``BaseDataset``).
        patch_size (int, optional): Defaults to the pipeline's
            ``ResizeToPatchMultiple``, else 16.
        max_tokens (int, optional): Defaults to the pipeline's, else None.
        exif_transpose (bool, optional): Defaults to the pipeline's
            ``LoadImageRobust``, else True.
    """

    def __init__(self,
                 dataset: Sized,
                 patch_size: Optional[int] = None,
                 max_tokens: Optional[int] = None,
                 exif_transpose: Optional[bool] = None) -> None:
        resize = _pipeline_transform(dataset, ResizeToPatchMultiple)
        loader = _pipeline_transform(dataset, LoadImageRobust)
        self.dataset = dataset
        self.patch_size = _pick('patch_size', patch_size, getattr(resize, 'patch_size', None), 16)
        self.max_tokens = _pick('max_tokens', max_tokens, getattr(resize, 'max_tokens', None),
                                None)
        self.exif_transpose = _pick('exif_transpose', exif_transpose,
                                    getattr(loader, 'exif_transpose', None), True)
        self.max_pixels = getattr(loader, 'max_pixels', None)
        self._grids: Optional[List[Grid]] = None

    def _grid(self, idx: int) -> Grid:
        path = self.dataset.get_data_info(idx)['img_path']
        try:
            return image_grid(path, self.patch_size, self.max_tokens, self.exif_transpose,
                              self.max_pixels)
        except ImageLoadError:
            return (1, 1)  # LoadImageRobust's one-patch placeholder

    @property
    def grids(self) -> List[Grid]:
        """Grid (rows, cols) per index; computed on first use."""
        if self._grids is None:
            self._grids = [self._grid(i) for i in range(len(self.dataset))]
            print_log(f'read token grids of {len(self._grids)} images '
                      f'({len(set(self._grids))} distinct)', logger='current',
                      level=logging.DEBUG)
        return self._grids

    def __getitem__(self, idx: int) -> Grid:
        return self.grids[idx]

    def __len__(self) -> int:
        return len(self.dataset)


@DATA_SAMPLERS.register_module()
class GridGroupedSampler(Sampler):
    """Distributed sampler that orders indices so equal token grids are adjacent.

    Indices are grouped by grid, then dealt out round-robin to the ranks,
    with no padding duplicates.

    Args:
        dataset (Sized): The dataset.
        shuffle (bool): Permute groups and indices. Defaults to False.
        seed (int, optional): Shuffle seed, identical on all ranks; None
            draws one and synchronises it. Defaults to None.
        patch_size, max_tokens, exif_transpose: See :class:`ImageGrids`.
    """

    def __init__(self,
                 dataset: Sized,
                 shuffle: bool = False,
                 seed: Optional[int] = None,
                 patch_size: Optional[int] = None,
                 max_tokens: Optional[int] = None,
                 exif_transpose: Optional[bool] = None) -> None:
        self.rank, self.world_size = get_dist_info()
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = sync_random_seed() if seed is None else seed
        self.epoch = 0
        self.grids = ImageGrids(dataset, patch_size, max_tokens, exif_transpose)

    def _global_order(self) -> List[int]:
        groups = group_indices(self.grids.grids)
        keys = sorted(groups, key=lambda g: (g[0] * g[1], g))
        if not self.shuffle:
            return [idx for key in keys for idx in groups[key]]
        gen = torch.Generator()
        gen.manual_seed(self.seed + self.epoch)
        keys = [keys[i] for i in torch.randperm(len(keys), generator=gen).tolist()]
        order = []
        for key in keys:
            members = groups[key]
            order.extend(members[i] for i in torch.randperm(len(members), generator=gen).tolist())
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self._global_order()[self.rank::self.world_size])

    def __len__(self) -> int:
        """Number of indices of this rank."""
        return len(range(self.rank, len(self.dataset), self.world_size))

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffle order (mmengine's loops call this every epoch)."""
        self.epoch = epoch


@DATA_SAMPLERS.register_module()
class GridBatchSampler(Sampler):
    """Batch sampler whose batches hold images of one token grid.

    A bucket per grid is yielded when full, and the partial ones at the end
    unless ``drop_last``.

    Args:
        sampler (Sampler): Yields dataset indices; must expose ``dataset``.
        batch_size (int): Images per batch (at most).
        drop_last (bool): Drop the short batches. Defaults to False.
    """

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool = False) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f'batch_size must be a positive integer, got {batch_size!r}')
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        grids = getattr(sampler, 'grids', None)
        if not isinstance(grids, ImageGrids):
            if not hasattr(sampler, 'dataset'):
                raise TypeError(f'{type(sampler).__name__} has no "dataset" attribute; '
                                'GridBatchSampler needs it to read image sizes')
            grids = ImageGrids(sampler.dataset)
        self.grids = grids

    def __iter__(self) -> Iterator[List[int]]:
        buckets: Dict[Grid, List[int]] = {}
        for idx in self.sampler:
            bucket = buckets.setdefault(self.grids[idx], [])
            bucket.append(idx)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()
        if not self.drop_last:
            for bucket in buckets.values():
                if bucket:
                    yield bucket

    def __len__(self) -> int:
        counts = [len(g) for g in group_indices(self.grids[idx] for idx in self.sampler).values()]
        full = sum(n // self.batch_size for n in counts)
        short = 0 if self.drop_last else sum(n % self.batch_size > 0 for n in counts)
        return full + short

    def set_epoch(self, epoch: int) -> None:
        """Forward to the sampler, for loops that call it on the batch sampler."""
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)

"""GridGroupedSampler / GridBatchSampler: coverage across ranks and uniform batches."""
import numpy as np
import pytest
from PIL import Image

import tagclip_mmseg.datasets.samplers as samplers
from tagclip_mmseg.datasets import (GridBatchSampler, GridGroupedSampler, ImageGrids,
                                    LoadImageRobust, ResizeToPatchMultiple)

#: (H, W) of the fabricated images; grids at p=16: 2x2, 2x2, 1x1, 3x2, 2x2, 1x1, 3x2, 2x2, 1x1
SIZES = [(32, 32), (20, 30), (8, 8), (40, 20), (17, 17), (1, 16), (48, 32), (31, 31), (16, 3)]


class _Pipeline:

    def __init__(self, transforms):
        self.transforms = transforms


class _FakeDataset:
    """The part of an mmengine dataset the samplers use."""

    def __init__(self, paths, pipeline=None):
        self.paths = paths
        if pipeline is not None:
            self.pipeline = _Pipeline(pipeline)

    def get_data_info(self, idx):
        return dict(img_path=self.paths[idx])

    def __len__(self):
        return len(self.paths)


@pytest.fixture
def dataset(tmp_path):
    paths = []
    for i, (h, w) in enumerate(SIZES):
        path = tmp_path / f'{i}.png'
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)
        paths.append(str(path))
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'')
    paths.append(str(broken))  # unreadable: the loader's one-patch placeholder
    return _FakeDataset(paths)


def _as_rank(monkeypatch, rank, world_size):
    monkeypatch.setattr(samplers, 'get_dist_info', lambda: (rank, world_size))


def test_grids_from_headers(dataset):
    grids = ImageGrids(dataset)
    assert grids.grids == [(2, 2), (2, 2), (1, 1), (3, 2), (2, 2), (1, 1), (3, 2), (2, 2), (1, 1),
                           (1, 1)]


def test_grid_settings_come_from_the_pipeline(dataset):
    dataset.pipeline = _Pipeline([LoadImageRobust(exif_transpose=False),
                                  ResizeToPatchMultiple(patch_size=8, max_tokens=4)])
    grids = ImageGrids(dataset)
    assert (grids.patch_size, grids.max_tokens, grids.exif_transpose) == (8, 4, False)
    assert all(r * c <= 4 for r, c in grids.grids)
    with pytest.raises(ValueError, match='differs from the dataset pipeline'):
        ImageGrids(dataset, patch_size=16)


@pytest.mark.parametrize('shuffle', [False, True])
@pytest.mark.parametrize('world_size', [1, 2, 3])
def test_every_index_once_across_ranks(dataset, monkeypatch, shuffle, world_size):
    seen = []
    for rank in range(world_size):
        _as_rank(monkeypatch, rank, world_size)
        sampler = GridGroupedSampler(dataset, shuffle=shuffle, seed=3)
        indices = list(sampler)
        assert len(indices) == len(sampler)
        grids = [sampler.grids[i] for i in indices]
        # grouped: each grid occupies one contiguous run
        runs = [g for i, g in enumerate(grids) if i == 0 or g != grids[i - 1]]
        assert len(runs) == len(set(grids))
        seen.extend(indices)
    assert sorted(seen) == list(range(len(dataset)))


def test_order_is_deterministic_and_seeded(dataset, monkeypatch):
    _as_rank(monkeypatch, 0, 1)
    plain = list(GridGroupedSampler(dataset))
    assert plain == [2, 5, 8, 9, 0, 1, 4, 7, 3, 6]  # ascending token count, then index
    a = GridGroupedSampler(dataset, shuffle=True, seed=7)
    b = GridGroupedSampler(dataset, shuffle=True, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert sorted(list(a)) == sorted(first)


@pytest.mark.parametrize('world_size', [1, 2])
@pytest.mark.parametrize('batch_size', [1, 2, 3])
def test_batches_share_a_grid(dataset, monkeypatch, world_size, batch_size):
    seen = []
    for rank in range(world_size):
        _as_rank(monkeypatch, rank, world_size)
        batch_sampler = GridBatchSampler(GridGroupedSampler(dataset, seed=0), batch_size)
        batches = list(batch_sampler)
        assert len(batches) == len(batch_sampler)
        for batch in batches:
            assert 1 <= len(batch) <= batch_size
            assert len({batch_sampler.grids[i] for i in batch}) == 1
        seen.extend(i for batch in batches for i in batch)
    assert sorted(seen) == list(range(len(dataset)))


def test_batch_sampler_with_default_sampler(dataset):
    from mmengine.dataset import DefaultSampler
    batch_sampler = GridBatchSampler(DefaultSampler(dataset, shuffle=False, round_up=False), 4)
    batches = list(batch_sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(dataset)))
    assert all(len({batch_sampler.grids[i] for i in b}) == 1 for b in batches)
    dropped = GridBatchSampler(DefaultSampler(dataset, shuffle=False, round_up=False), 4,
                               drop_last=True)
    assert all(len(b) == 4 for b in dropped) and len(dropped) == len(list(dropped)) == 2


def test_batch_sampler_arguments(dataset):
    with pytest.raises(ValueError, match='batch_size'):
        GridBatchSampler(GridGroupedSampler(dataset, seed=0), 0)
    with pytest.raises(TypeError, match='dataset'):
        GridBatchSampler(range(3), 2)

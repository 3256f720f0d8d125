"""Load: a few hundred generated images through both tools, memory watched per batch.

The images mix sizes (16-200 px a side), pixel modes and a few broken files.
Both tools run in this process with a probe hook that records the resident
memory after every batch, so growth can be related to the number of images
done. A leak of even a few hundred KB per image (one input tensor, one
full-size CAM kept per image) would show over the second half of the run;
every image must be accounted for in the summaries.
"""
import io
import json
import os

import numpy as np
import pytest
from mmengine.hooks import Hook
from PIL import Image

from tagclip_mmseg.testing.checkout import repo_root

NUM_IMAGES = 240
NUM_BROKEN = 6
#: Allowed RSS growth from the middle to the end of a run (120 images). The
#: models keep nothing per image; the writers keep one small record each
#: (id, path, ~20 scores: < 2 KB), the allocator and torch's caches settle in
#: the first batches. 48 MB catches a leak of ~0.4 MB per image, e.g. one
#: 200x200 float32 input tensor (0.48 MB) per image.
GROWTH_LIMIT_MB = 48
TAG_CONFIG = 'configs/tagclip/tagclip_vit-b16_folder.py'
MODES = ('RGB', 'L', 'RGBA', 'P', 'CMYK', 'I;16')
REPO = repo_root(__file__)


def rss_bytes() -> int:
    """Current resident set size of this process (Linux)."""
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


class ReliabilityMemoryProbe(Hook):
    """Record ``(images in the batch, RSS after it)`` after every test batch."""

    samples: list = []

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        type(self).samples.append((len(outputs), rss_bytes()))


def _image(rng, mode: str) -> Image.Image:
    h, w = (int(v) for v in rng.integers(16, 201, size=2))
    if mode == 'I;16':
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if mode in ('L', 'P'):
        img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
        return img.convert('P') if mode == 'P' else img
    channels = len(mode)
    return Image.fromarray(rng.integers(0, 256, (h, w, channels), dtype=np.uint8), mode)


@pytest.fixture(scope='module')
def load(tmp_path_factory, image_split):
    """``NUM_IMAGES`` files (``NUM_BROKEN`` of them broken), a split list and tags."""
    rng = np.random.default_rng(0)
    ids = [f'img{i:04d}' for i in range(NUM_IMAGES)]
    broken = set(ids[7::NUM_IMAGES // NUM_BROKEN][:NUM_BROKEN])

    def write(i, img_id, path):
        if img_id in broken:
            buf = io.BytesIO()
            _image(rng, 'RGB').save(buf, format='JPEG')
            path.write_bytes(buf.getvalue()[:i % 3 * len(buf.getvalue()) // 3])
            return
        mode = MODES[i % len(MODES)]
        _image(rng, mode).save(path, format='JPEG' if mode in ('RGB', 'L', 'CMYK') else 'PNG')

    root = image_split(tmp_path_factory.mktemp('stress'), ids, write,
                       lambda img_id: sorted(set(rng.integers(0, 20, size=2).tolist())))
    return dict(root=root, ids=ids, broken=broken)


@pytest.fixture
def probe(tmp_path):
    """Register the probe hook; return a function that derives a probed config."""
    from mmseg.registry import HOOKS
    HOOKS.register_module(module=ReliabilityMemoryProbe, force=True)
    ReliabilityMemoryProbe.samples = []

    def probed(config: str) -> str:
        path = tmp_path / ('probed_' + os.path.basename(config))
        path.write_text(f'_base_ = [{os.path.join(REPO, config)!r}]\n'
                        "custom_hooks = [dict(type='RunProgressHook'), "
                        "dict(type='VocabularyHook'), dict(type='ReliabilityMemoryProbe')]\n")
        return str(path)

    return probed


def growth_over_second_half_mb(samples) -> float:
    """RSS after the last batch minus RSS after the batch that passed half the images."""
    done = np.cumsum([n for n, _ in samples])
    rss = np.array([r for _, r in samples])
    half = int(np.searchsorted(done, done[-1] / 2))
    return (rss[-1] - rss[half]) / 2**20


@pytest.mark.slow
def test_pseudo_labels_under_load(load, probe, tmp_path, tiny_tool_options, tool_runner,
                                  pl_list_config):
    root, out = load['root'], tmp_path / 'out'
    tool_runner.inprocess(
        'tools/generate_pseudo_labels.py', probe(pl_list_config), '--out', str(out), '--tags',
        str(root / 'tags.txt'), '--cfg-options', *tiny_tool_options['pl'],
        f'test_dataloader.dataset.data_root={root}', 'test_dataloader.dataset.ann_file=list.txt')
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['written'] + summary['skipped'] + summary['failed'] == NUM_IMAGES
    assert (summary['written'], summary['failed']) == (NUM_IMAGES - NUM_BROKEN, NUM_BROKEN)
    assert {r['img_id'] for r in summary['failed_images']} == load['broken']
    written = {f[:-4] for f in os.listdir(out) if f.endswith('.png')}
    assert written == set(load['ids']) - load['broken']
    samples = ReliabilityMemoryProbe.samples
    assert sum(n for n, _ in samples) == NUM_IMAGES
    growth = growth_over_second_half_mb(samples)
    print(f'RSS growth over the second half: {growth:.1f} MB')
    assert growth < GROWTH_LIMIT_MB


@pytest.mark.slow
def test_tagging_under_load(load, probe, tmp_path, tiny_tool_options, tool_runner):
    root = load['root']
    tool_runner.inprocess(
        'tools/test.py', probe(TAG_CONFIG), '--work-dir',
        str(tmp_path / 'work_dir'), '--cfg-options', *tiny_tool_options['tag'],
        'test_dataloader.dataset.type=MultiLabelListDataset',
        f'test_dataloader.dataset.data_root={root}', 'test_dataloader.dataset.ann_file=list.txt',
        'test_dataloader.dataset.data_prefix.img_path=JPEGImages',
        f'test_evaluator.0.out_file={tmp_path / "tags.txt"}',
        f'test_evaluator.0.scores_file={tmp_path / "scores.jsonl"}')
    tagged = [line.split()[0] for line in (tmp_path / 'tags.txt').read_text().splitlines()]
    skipped = [line.split('\t')[0] for line in
               (tmp_path / 'tags.skipped.txt').read_text().splitlines()]
    assert len(tagged) + len(skipped) == NUM_IMAGES
    assert set(skipped) == load['broken']
    assert sorted(tagged + skipped) == load['ids']
    samples = ReliabilityMemoryProbe.samples
    assert sum(n for n, _ in samples) == NUM_IMAGES
    growth = growth_over_second_half_mb(samples)
    print(f'RSS growth over the second half: {growth:.1f} MB')
    assert growth < GROWTH_LIMIT_MB

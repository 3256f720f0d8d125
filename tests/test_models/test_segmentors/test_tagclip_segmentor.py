"""TagCLIPSegmentor and the open-vocabulary benchmark configs.

* Every ``configs/open_vocab`` config builds, on its mmseg dataset base.
* Each benchmark runs end to end through ``tools/test.py`` on a tiny dataset
  written in that mmseg dataset's real folder layout, with a tiny random CLIP;
  ``IoUMetric`` reports a value.
* Known answers: forced tags and CAMs give a hand-computed mIoU, on a dataset
  with a background class (VOC21) and on a ``reduce_zero_label`` one (ADE20K).
* Slide equals whole on an image that fits one window; a large image stays
  below a stated memory bound (slow).
"""
import argparse
import glob
import json
import os
import os.path as osp
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg import registry as R
from mmseg.structures import SegDataSample
from PIL import Image

import tagclip_mmseg  # noqa: F401
from tagclip_mmseg.models.pseudo_labelers import CLIPESPseudoLabeler
from tagclip_mmseg.models.segmentors import TagCLIPSegmentor, slide_windows
from tagclip_mmseg.models.taggers import TagCLIP
from tagclip_mmseg.testing.checkout import repo_root, tool_env
from tagclip_mmseg.utils import (COCO_CATEGORY_IDS, load_config, set_clip_checkpoint,
                                 set_open_vocab_protocol)
from tagclip_mmseg.utils.quirks import Quirks

ROOT = repo_root(__file__)
CONFIG_DIR = osp.join(ROOT, 'configs', 'open_vocab')
CONFIGS = sorted(glob.glob(osp.join(CONFIG_DIR, '*.py')))
BENCHMARKS = ('voc21', 'voc20', 'context60', 'context59', 'coco-object', 'coco-stuff171',
              'cityscapes', 'ade20k')


def config_path(benchmark: str) -> str:
    return osp.join('configs', 'open_vocab', f'tagclip_vit-b16_{benchmark}.py')


@pytest.fixture(autouse=True)
def mmseg_scope():
    init_default_scope('mmseg')


# ------------------------------------------------------------------ configs
def test_one_config_per_benchmark():
    names = {osp.basename(p) for p in CONFIGS}
    assert {osp.basename(config_path(b)) for b in BENCHMARKS} <= names


@pytest.mark.parametrize('path', CONFIGS, ids=[osp.basename(p) for p in CONFIGS])
def test_config_builds(path, deep_tiny_clip_path, tmp_path):
    cfg = Config.fromfile(path)
    assert set_clip_checkpoint(cfg, deep_tiny_clip_path) == 1  # one CLIP, shared
    cfg.model.clip.dtype = 'fp32'
    cfg.model.text_cache_dir = str(tmp_path / 'cache')
    if cfg.model.get('crf') is not None:
        pytest.importorskip('pydensecrf')
    model = R.MODELS.build(cfg.model)
    assert isinstance(model, TagCLIPSegmentor)
    assert model.tagger.clip is model.labeler.clip  # shared, not a copy
    assert not any(p.requires_grad for p in model.parameters())
    # The paper's settings are the default; the protocol's slide inference.
    assert model.quirks == Quirks.reference() and not model.all_classes_as_tags
    assert model.labeler.quirks == model.tagger.quirks == Quirks.reference()
    assert model.tag_ratio is None
    assert model.test_cfg['inference'] == 'slide'
    assert model.test_cfg['crop_size'] == (224, 224) and model.test_cfg['stride'] == (112, 112)
    # Built on mmseg's dataset bases: the dataset, pipeline and IoUMetric.
    ds_cfg = cfg.test_dataloader.dataset
    # Some mmseg datasets check that their image folder and split exist even lazily.
    os.makedirs(osp.join(str(tmp_path), ds_cfg.data_prefix['img_path']))
    if ds_cfg.get('ann_file'):
        os.makedirs(osp.dirname(osp.join(str(tmp_path), ds_cfg.ann_file)), exist_ok=True)
        open(osp.join(str(tmp_path), ds_cfg.ann_file), 'w').close()
    dataset = R.DATASETS.build(dict(ds_cfg, lazy_init=True, data_root=str(tmp_path)))
    classes = dataset.metainfo['classes']
    # A background channel exactly when the dataset's class 0 is background,
    # never with reduce_zero_label.
    assert model.with_background == (classes[0] == 'background')
    assert not (model.with_background and dataset.reduce_zero_label)
    if model.class_names is not None:
        assert model.num_classes == len(classes)
    resize = [t for t in ds_cfg.pipeline if t['type'] == 'Resize']
    assert len(resize) == 1 and resize[0]['keep_ratio']
    assert resize[0]['scale'][1] in (336, 448, 560)  # the protocol's shorter sides
    for t in ds_cfg.pipeline:
        R.TRANSFORMS.build(t)
    assert cfg.test_evaluator['type'] == 'IoUMetric'
    R.METRICS.build(cfg.test_evaluator)
    assert cfg.test_dataloader.batch_size == 1
    assert cfg.get('val_dataloader') is None and cfg.get('train_dataloader') is None


# --------------------------------------------------------- tiny datasets
def _image(rng, h: int, w: int) -> Image.Image:
    """A smooth random photo-like image (gradients and two rectangles)."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1),
                    np.full((h, w), 128)], -1).astype(np.uint8)
    for _ in range(2):
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        img[y0:y0 + h // 3, x0:x0 + w // 3] = rng.integers(0, 256, 3)
    return Image.fromarray(img)


def _mask(rng, h: int, w: int, values) -> np.ndarray:
    mask = np.full((h, w), values[0], np.uint8)
    mask[h // 4:, : w // 2] = values[1]
    mask[: h // 5] = 255
    return mask


#: Per benchmark: data_root (relative to the test's folder), image path and
#: mask path of one image id, the split file (or None), mask values used.
LAYOUTS = {
    'voc21': ('VOCdevkit/VOC2012', 'JPEGImages/{}.jpg', 'SegmentationClass/{}.png',
              'ImageSets/Segmentation/val.txt', (0, 15)),
    'voc20': ('VOCdevkit/VOC2012', 'JPEGImages/{}.jpg', 'SegmentationClass/{}.png',
              'ImageSets/Segmentation/val.txt', (0, 15)),
    'context60': ('VOCdevkit/VOC2010', 'JPEGImages/{}.jpg', 'SegmentationClassContext/{}.png',
                  'ImageSets/SegmentationContext/val.txt', (0, 48)),
    'context59': ('VOCdevkit/VOC2010', 'JPEGImages/{}.jpg', 'SegmentationClassContext/{}.png',
                  'ImageSets/SegmentationContext/val.txt', (0, 48)),
    'coco-object': ('coco_stuff164k', 'images/val2017/{}.jpg',
                    'annotations/val2017/{}_instanceTrainIds.png', None, (0, 1)),
    'coco-stuff171': ('coco_stuff164k', 'images/val2017/{}.jpg',
                      'annotations/val2017/{}_labelTrainIds.png', None, (156, 0)),
    'cityscapes': ('cityscapes', 'leftImg8bit/val/frankfurt/{}_leftImg8bit.png',
                   'gtFine/val/frankfurt/{}_gtFine_labelTrainIds.png', None, (0, 11)),
    'ade20k': ('ade/ADEChallengeData2016', 'images/validation/{}.jpg',
               'annotations/validation/{}.png', None, (1, 13)),
}
#: (h, w) of the images written; two sizes for VOC21 (batching of sizes).
SIZES = {'voc21': ((80, 96), (72, 64))}


def write_dataset(root, benchmark: str, images=None, masks=None) -> str:
    """Images and masks of ``benchmark`` in its mmseg layout; returns data_root."""
    data_root, img_tpl, seg_tpl, split, values = LAYOUTS[benchmark]
    base = osp.join(str(root), data_root)
    rng = np.random.default_rng(len(benchmark))
    sizes = SIZES.get(benchmark, ((64, 80), ))
    images = images or [_image(rng, h, w) for h, w in sizes]
    masks = masks or [_mask(rng, h, w, values) for h, w in sizes]
    ids = [f'2008_00000{i}' if 'voc' in benchmark or 'context' in benchmark else
           f'frankfurt_000000_00029{i}' if benchmark == 'cityscapes' else f'00000000139{i}'
           for i in range(len(images))]
    for img_id, img, mask in zip(ids, images, masks):
        for rel, obj in ((img_tpl, img), (seg_tpl, Image.fromarray(mask))):
            path = osp.join(base, rel.format(img_id))
            os.makedirs(osp.dirname(path), exist_ok=True)
            obj.save(path)
    if split:
        path = osp.join(base, split)
        os.makedirs(osp.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            f.write(''.join(i + '\n' for i in ids))
    return base


def tiny_options(ckpt: str, root, data_root: str, short_side: int = 64, **extra) -> list:
    """Shrink a benchmark config to the 3-layer tiny CLIP and tiny images."""
    opts = {
        'model.clip.checkpoint': ckpt, 'model.clip.dtype': 'fp32',
        'model.text_cache_dir': str(root / 'text_cache'),
        'model.tagger.templates': "['a photo of a {}.']",
        'model.labeler.templates': "['a photo of a {}.']",
        'model.tagger.avg_layers': '[0,1]', 'model.tagger.vote_k': 2,
        'model.tagger.cwr_crop_size': 64, 'model.labeler.caa_layers': '[0,1,2]',
        'model.test_cfg.crop_size': 64, 'model.test_cfg.stride': 48,
        'test_dataloader.num_workers': 0, 'test_dataloader.persistent_workers': False,
        'test_dataloader.dataset.data_root': data_root,
        'test_dataloader.dataset.pipeline.1.scale': f'(2048,{short_side})',
    }
    opts.update(extra)
    return [f'{k}={v}' for k, v in opts.items()]


def run_test_tool(tool_runner, benchmark: str, options: list, work_dir, *extra) -> dict:
    """tools/test.py in this process; returns the metrics it logged."""
    tool_runner.inprocess('tools/test.py', config_path(benchmark), '--work-dir', str(work_dir),
                          *extra, '--cfg-options', *options)
    logs = sorted(glob.glob(osp.join(str(work_dir), '*', '*.json')))
    assert logs, f'no metrics json in {work_dir}'
    with open(logs[-1]) as f:
        text = f.read().strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:  # one record per line
        return json.loads(text.splitlines()[-1])


#: Benchmarks whose end-to-end run is quick enough for every test run: one
#: with a background class (and --show-dir), one with reduce_zero_label.
FAST_BENCHMARKS = ('voc21', 'ade20k')


@pytest.mark.parametrize('benchmark', [
    pytest.param(b, marks=pytest.mark.classic if b in FAST_BENCHMARKS else pytest.mark.slow)
    for b in BENCHMARKS
])
def test_benchmark_end_to_end(benchmark, tmp_path, tiny_tool_options, tool_runner):
    data_root = write_dataset(tmp_path, benchmark)
    extra = ('--show-dir', str(tmp_path / 'show')) if benchmark == 'voc21' else ()
    metrics = run_test_tool(tool_runner, benchmark,
                            tiny_options(tiny_tool_options['checkpoint'], tmp_path, data_root),
                            tmp_path / 'work', *extra)
    assert 0 <= metrics['mIoU'] <= 100 and 0 <= metrics['aAcc'] <= 100
    if extra:  # SegLocalVisualizer painted every image
        assert len(glob.glob(str(tmp_path / '**' / 'show' / '**' / '*.png'),
                             recursive=True)) == len(SIZES['voc21'])


def test_crf_workers_reach_iou_metric_and_show_dir(tmp_path, tiny_tool_options, tool_runner):
    """tools/test.py on the VOC21 CRF config.

    With model.crf.workers=2, mmseg's IoUMetric, its --out PNGs and the SegVisualizationHook
    pictures equal the in-process CRF's (they were all 255, mIoU 0, before predict waited).
    """
    pytest.importorskip('pydensecrf')
    from tagclip_mmseg.models.pseudo_labelers import shutdown_crf_pools
    data_root = write_dataset(tmp_path, 'voc21')
    runs = {}
    for workers in (0, 2):
        run_dir = tmp_path / f'w{workers}'
        options = tiny_options(tiny_tool_options['checkpoint'], tmp_path, data_root,
                               **{'model.crf.workers': workers, 'model.crf.iterations': 3,
                                  'test_dataloader.batch_size': 2,
                                  # one visualizer per run (mmengine keeps them by name)
                                  'visualizer.name': f'{tmp_path.name}_w{workers}'})
        metrics = run_test_tool(tool_runner, 'voc21_crf', options, run_dir / 'work',
                                '--out', str(run_dir / 'out'), '--show-dir',
                                str(run_dir / 'show'))
        preds = {p.name: np.asarray(Image.open(p)) for p in sorted((run_dir / 'out').glob('*.png'))}
        shows = [p.read_bytes() for p in sorted((run_dir / 'show').rglob('*.png'),
                                                 key=lambda p: p.name)]
        runs[workers] = (metrics, preds, shows)
    shutdown_crf_pools()
    (metrics0, preds0, shows0), (metrics2, preds2, shows2) = runs[0], runs[2]
    assert len(preds0) == len(SIZES['voc21']) and len(shows0) == len(SIZES['voc21'])
    assert any((p != 255).any() for p in preds0.values())
    assert preds2.keys() == preds0.keys()
    assert all(np.array_equal(preds2[k], preds0[k]) for k in preds0)
    assert shows2 == shows0
    assert {k: metrics2[k] for k in ('mIoU', 'aAcc')} == {k: metrics0[k] for k in ('mIoU', 'aAcc')}


# -------------------------------------------------------------- known answers
def _forced(monkeypatch, tags, grid_cols):
    """Force TagCLIP's tags and each tag's patch-grid CAM (constant rows).

    ``grid_cols[c]`` is the value of class ``c``'s CAM in each patch column.
    """
    calls = dict(tag=0)

    def tag(self, images):
        calls['tag'] += 1
        mask = torch.zeros(images.shape[0], self.num_classes, dtype=torch.bool)
        mask[:, tags] = True
        return SimpleNamespace(tags=mask, p_final=mask.float())

    def compute_cams(self, images, tag_lists):
        p = self.clip.visual.patch_size
        hp, wp = images.shape[-2] // p, images.shape[-1] // p
        cams = torch.zeros(images.shape[0], len(tag_lists[0]), hp, wp)
        for k, c in enumerate(tag_lists[0]):
            cams[:, k] = torch.tensor(grid_cols[c], dtype=torch.float32)[None, :wp]
        return cams, (hp, wp)

    monkeypatch.setattr(TagCLIP, 'tag', tag)
    monkeypatch.setattr(CLIPESPseudoLabeler, 'compute_cams', compute_cams)
    return calls


def iou_oracle(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """MIoU (%) over classes present in the GT or the prediction; 255 ignored."""
    valid = gt != 255
    ious = []
    for c in range(num_classes):
        g, p = (gt == c) & valid, (pred == c) & valid
        union = (g | p).sum()
        if union:
            ious.append((g & p).sum() / union)
    return 100 * float(np.mean(ious))


@pytest.mark.parametrize('benchmark', ['voc21', 'ade20k'])
def test_forced_cams_give_the_known_miou(benchmark, tmp_path, tiny_tool_options, tool_runner,
                                         monkeypatch):
    """64x64 image, 4x4 patch grid, CAMs constant along rows.

    Bilinear upsampling (align_corners=False) of patch columns (a, b, ...)
    crosses between columns 0 and 1 at pixel x = 16 exactly (values 15/32
    and 17/32 at x = 15, 16). The GT boundary is at x = 32.

    * VOC21 (background class 0): one tag, person (label 15), CAM columns
      (0, 1, 1, 1): background where 1 - cam > cam, i.e. x < 16.
    * ADE20K (reduce_zero_label): raw mask values 1 (wall -> class 0) and 3
      (sky -> class 2); raw 0 rows are ignored. Tags wall and sky with
      complementary CAMs (1, 0, 0, 0) and (0, 1, 1, 1): wall for x < 16.
    """
    size = 64
    x = np.arange(size)[None].repeat(size, 0)
    if benchmark == 'voc21':
        raw = np.where(x < 32, 0, 15).astype(np.uint8)
        raw[:6] = 255
        gt, num_classes = raw, 21
        tags, cols = [14], {14: (0, 1, 1, 1)}
        pred = np.where(x < 16, 0, 15)
    else:
        raw = np.where(x < 32, 1, 3).astype(np.uint8)
        raw[:6] = 0
        gt = np.where(raw == 0, 255, raw.astype(np.int64) - 1)  # reduce_zero_label by hand
        num_classes = 150
        tags, cols = [0, 2], {0: (1, 0, 0, 0), 2: (0, 1, 1, 1)}
        pred = np.where(x < 16, 0, 2)
    calls = _forced(monkeypatch, tags, cols)
    rng = np.random.default_rng(0)
    data_root = write_dataset(tmp_path, benchmark, images=[_image(rng, size, size)], masks=[raw])
    options = tiny_options(tiny_tool_options['checkpoint'], tmp_path, data_root,
                           short_side=size, **{'model.test_cfg.inference': 'whole'})
    metrics = run_test_tool(tool_runner, benchmark, options, tmp_path / 'work')
    expected = iou_oracle(gt, pred, num_classes)
    assert calls['tag'] == 1
    assert metrics['mIoU'] == pytest.approx(expected, abs=0.01)
    assert expected == pytest.approx(100 * (16 / 32 + 32 / 48) / 2)  # the oracle's arithmetic


# ------------------------------------------------------------- COCO-Object
CONVERTER = 'tools/dataset_converters/coco_object.py'
#: COCO-Object value of 'dog' (category id 18; the 12th id is unused, so the
#: stuffthingmap value 17 = id - 1 becomes class 17 = tag index 16 + 1).
DOG = 17


def _coco_stuff(root, size: int = 64):
    """Two images and their stuffthingmaps in mmseg's COCO-Stuff 164k layout.

    Image 1: unlabeled rows 0-5 (255), stuff 'hill' (120) for x < 32, a dog
    (17) for x >= 32. Image 2: stuff only ('playingfield', 150). Returns the
    data root and the masks the converter must write (0 background, 17 dog).
    """
    x = np.arange(size)[None].repeat(size, 0)
    things = np.where(x < 32, 120, DOG).astype(np.uint8)
    things[:6] = 255
    stuff = np.full((size, size), 150, np.uint8)
    base = osp.join(str(root), 'coco_stuff164k')
    rng = np.random.default_rng(0)
    for stem, stuffthingmap in (('000000000139', things), ('000000000285', stuff)):
        for rel, obj in ((f'images/val2017/{stem}.jpg', _image(rng, size, size)),
                         (f'annotations/val2017/{stem}.png', Image.fromarray(stuffthingmap))):
            os.makedirs(osp.dirname(osp.join(base, rel)), exist_ok=True)
            obj.save(osp.join(base, rel))
    return base, [np.where(things == DOG, DOG, 0), np.zeros_like(stuff)]


def _run_converter(tool_runner, *args) -> None:
    with pytest.raises(SystemExit) as done:
        tool_runner.inprocess(CONVERTER, *args, '--no-progress')
    assert done.value.code == 0


def test_coco_object_from_stuffthingmaps_end_to_end(tmp_path, tiny_tool_options, tool_runner,
                                                    monkeypatch):
    """Converter, then the config, then tools/test.py.

    Forced dog CAMs as in :func:`test_forced_cams_give_the_known_miou` (dog for x >= 16).
    """
    data_root, gts = _coco_stuff(tmp_path)
    _run_converter(tool_runner, data_root)
    calls = _forced(monkeypatch, [DOG - 1], {DOG - 1: (0, 1, 1, 1)})
    options = tiny_options(tiny_tool_options['checkpoint'], tmp_path, data_root, short_side=64,
                           **{'model.test_cfg.inference': 'whole'})
    metrics = run_test_tool(tool_runner, 'coco-object', options, tmp_path / 'work')
    x = np.arange(64)[None].repeat(64, 0)
    pred = np.where(x < 16, 0, DOG)
    expected = iou_oracle(np.concatenate(gts), np.concatenate([pred, pred]), 81)
    assert calls['tag'] == 2  # both images, the one without things included
    assert metrics['mIoU'] == pytest.approx(expected, abs=0.01)
    # Background: 1024 + 1024 right of 2240 + 4096; dog: 1856 right of 3072 + 3072.
    assert expected == pytest.approx(100 * (2048 / 6336 + 1856 / 6144) / 2)


def test_coco_object_missing_mask_names_the_converter(tmp_path, tiny_tool_options, tool_runner):
    data_root, _ = _coco_stuff(tmp_path)
    _run_converter(tool_runner, data_root)
    os.remove(osp.join(data_root, 'annotations', 'val2017', '000000000285_instanceTrainIds.png'))
    options = tiny_options(tiny_tool_options['checkpoint'], tmp_path, data_root)
    with pytest.raises(FileNotFoundError,
                       match=r'1 of the 2 images have no COCO-Object mask, e\.g\. .*'
                       r'000000000285_instanceTrainIds\.png; .*'
                       r'`python tools/dataset_converters/coco_object.py '):
        run_test_tool(tool_runner, 'coco-object', options, tmp_path / 'work')


def test_coco_object_from_instances_reaches_the_config(tmp_path, tool_runner):
    """``--from-instances`` with the config's folder and suffix.

    The same masks from a json whose dog polygon covers the dog of the stuffthingmap.
    """
    data_root, gts = _coco_stuff(tmp_path)
    coco = tmp_path / 'coco'
    (coco / 'annotations').mkdir(parents=True)
    images = [dict(id=i, file_name=f'{i:012d}.jpg', height=64, width=64) for i in (139, 285)]
    dog = dict(id=1, image_id=139, category_id=18, iscrowd=0,
               segmentation=[[32, 6, 64, 6, 64, 64, 32, 64]])  # rows 6-63, columns 32-63
    categories = [dict(id=c, name=str(c)) for c in COCO_CATEGORY_IDS]
    (coco / 'annotations' / 'instances_val2017.json').write_text(
        json.dumps(dict(images=images, annotations=[dog], categories=categories)))
    _run_converter(tool_runner, str(coco), '--from-instances', '--mask-dir',
                   osp.join(data_root, 'annotations'), '--suffix', '_instanceTrainIds.png')
    cfg = Config.fromfile(config_path('coco-object'))
    dataset = R.DATASETS.build(dict(cfg.test_dataloader.dataset, data_root=data_root))
    infos = sorted((dataset.get_data_info(i) for i in range(len(dataset))),
                   key=lambda d: d['img_path'])
    assert len(infos) == 2
    for info, gt in zip(infos, gts):
        np.testing.assert_array_equal(np.asarray(Image.open(info['seg_map_path'])), gt)


# ------------------------------------------------------ sizes per project
PROTOCOLS = ('tagclip_mmseg', 'sclip', 'naclip', 'proxyclip')
#: A few cells of docs/open_vocab.md "Sizes per project", typed from the
#: projects' configs: (shorter side, window, stride).
KNOWN_SIZES = {
    ('tagclip_mmseg', 'coco_stuff171'): (336, 224, 112),
    ('tagclip_mmseg', 'cityscapes'): (560, 224, 112),
    ('sclip', 'coco_stuff171'): (448, 224, 112),
    ('naclip', 'cityscapes'): (560, 224, 112),
    ('proxyclip', 'ade20k'): (448, 336, 112),
    ('proxyclip', 'cityscapes'): (448, 224, 112),
    ('proxyclip', 'voc21'): (336, 336, 112),
    ('proxyclip', 'voc20'): None,
}


def _built_sizes(cfg) -> tuple:
    """(shorter side of the built Resize, window, stride) of a config."""
    resizes = [R.TRANSFORMS.build(t) for t in cfg.test_dataloader.dataset.pipeline
               if t['type'] == 'Resize']
    assert len(resizes) == 1 and resizes[0].scale[0] == 2048
    return resizes[0].scale[1], cfg.model.test_cfg.crop_size, cfg.model.test_cfg.stride


def test_configs_take_their_sizes_from_the_table():
    """As loaded: the default column; every benchmark has a row."""
    for path in CONFIGS:
        cfg = Config.fromfile(path)
        assert cfg.open_vocab_protocol == 'tagclip_mmseg'
        assert _built_sizes(cfg) == tuple(cfg.open_vocab_sizes.tagclip_mmseg[
            cfg.open_vocab_benchmark])
    table = Config.fromfile(CONFIGS[0]).open_vocab_sizes
    assert all(set(column) == set(table.tagclip_mmseg) for column in table.values())
    assert set(PROTOCOLS) == set(table)


@pytest.mark.parametrize('protocol', PROTOCOLS)
def test_protocol_switches_every_config(protocol):
    for path in CONFIGS:
        cfg = Config.fromfile(path)
        benchmark = cfg.open_vocab_benchmark
        sizes = cfg.open_vocab_sizes[protocol][benchmark]
        if (protocol, benchmark) in KNOWN_SIZES:
            assert KNOWN_SIZES[protocol, benchmark] == (sizes and tuple(sizes))
        if sizes is None:
            with pytest.raises(ValueError, match=f'{protocol} gives no sizes for {benchmark}'):
                set_open_vocab_protocol(cfg, protocol)
            continue
        assert set_open_vocab_protocol(cfg, protocol) == tuple(sizes)
        assert _built_sizes(cfg) == tuple(sizes) and cfg.open_vocab_protocol == protocol


def test_protocol_reaches_the_model_and_yields_to_explicit_options(deep_tiny_clip_path,
                                                                   tmp_path):
    args = argparse.Namespace(
        config=config_path('ade20k'), launcher='none', data_root=None,
        cfg_options={'open_vocab_protocol': 'proxyclip', 'model.test_cfg.stride': 100,
                     'model.clip.checkpoint': deep_tiny_clip_path,
                     'model.text_cache_dir': str(tmp_path / 'cache')})
    cfg = load_config(args)
    model = R.MODELS.build(cfg.model)
    assert model.test_cfg['crop_size'] == (336, 336)  # ProxyCLIP's window
    assert model.test_cfg['stride'] == (100, 100)     # the explicit option wins
    assert _built_sizes(cfg)[0] == 448
    with pytest.raises(ValueError, match="unknown open_vocab_protocol 'scl'"):
        set_open_vocab_protocol(Config.fromfile(config_path('ade20k')), 'scl')
    with pytest.raises(ValueError, match='applies to the configs of configs/open_vocab'):
        set_open_vocab_protocol(Config(dict(model=dict())), 'sclip')


# ----------------------------------------------------------- model behaviour
@pytest.fixture
def tiny_model_cfg(tiny_clip, tmp_path):
    def make(**overrides):
        cfg = dict(
            clip=tiny_clip, text_cache_dir=str(tmp_path / 'cache'),
            tagger=dict(class_names=['cat', 'dog', 'car'], background_words=['sky', 'road'],
                        templates=['a photo of a {}.'], avg_layers=[0, 1], vote_k=2,
                        cwr_crop_size=64),
            labeler=dict(class_names=['cat', 'dog', 'car'], background_words=['sky', 'road'],
                         templates=['a photo of a {}.'], caa_layers=[0, 1, 2]),
            test_cfg=dict(inference='whole', crop_size=64, stride=40))
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key] = {**cfg[key], **value}
            else:
                cfg[key] = value
        return TagCLIPSegmentor(**cfg).eval()
    return make


def _normalised(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(3, h, w, generator=torch.Generator().manual_seed(seed))



def test_bf16_run_first_leaves_the_fp32_text_cache_exact(tiny_model_cfg, tiny_clip_path, tmp_path):
    """Both models' text caches.

    A bf16 run on a cold cache, then fp32 on it, equals fp32 on a cold cache (a checkpoint file, so
    the cache is used).
    """
    image = _normalised(48, 64, seed=7)
    clip = dict(checkpoint=tiny_clip_path)
    shared, cold = str(tmp_path / 'shared'), str(tmp_path / 'cold')
    tiny_model_cfg(clip=clip, text_cache_dir=shared, autocast='bf16').predict([image])
    assert os.listdir(shared)  # the bf16 run wrote the entry (both models' prompts are equal)
    warm = tiny_model_cfg(clip=clip, text_cache_dir=shared)
    fresh = tiny_model_cfg(clip=clip, text_cache_dir=cold)
    for name in ('tagger', 'labeler'):
        a, b = getattr(warm, name), getattr(fresh, name)
        assert torch.equal(a.text_embeddings(a.class_names + a.background_words, a.templates),
                           b.text_embeddings(b.class_names + b.background_words, b.templates))
    a, b = warm.predict([image])[0], fresh.predict([image])[0]
    assert torch.equal(a.seg_logits.data, b.seg_logits.data)
    assert torch.equal(a.pred_sem_seg.data, b.pred_sem_seg.data)


def test_seg_logits_background_and_untagged_channels(tiny_model_cfg, monkeypatch):
    _forced(monkeypatch, [2], {2: (0.2, 0.9, 0.6, 0.1)})
    model = tiny_model_cfg()
    sample = SegDataSample(metainfo=dict(ori_shape=(64, 128)))  # input at half size
    out = model.predict([_normalised(32, 64)], [sample])[0]
    logits, pred = out.seg_logits.data, out.pred_sem_seg.data[0]
    assert logits.shape == (4, 64, 128) and pred.shape == (64, 128)
    cam = logits[3]
    assert torch.equal(logits[1], torch.zeros_like(cam))  # untagged: zeros
    assert torch.equal(logits[2], torch.zeros_like(cam))
    assert torch.allclose(logits[0], 1 - cam)  # background = 1 - max(tagged CAMs)
    assert set(pred.unique().tolist()) == {0, 3}
    assert torch.equal(pred == 3, cam > 0.5)
    assert out.tags == [2]


def test_an_image_without_tags(tiny_model_cfg, monkeypatch):
    """All background with a background class; 255 (no prediction) without."""
    _forced(monkeypatch, [], {})
    for with_background, label in ((True, 0), (False, 255)):
        model = tiny_model_cfg(with_background=with_background)
        sample = SegDataSample(metainfo=dict(ori_shape=(40, 50)))
        out = model.predict([_normalised(32, 32)], [sample])[0]
        assert out.tags == []
        assert out.pred_sem_seg.data.shape == (1, 40, 50)
        assert (out.pred_sem_seg.data == label).all()
        expected = torch.zeros(model.num_classes, 40, 50)
        expected[0] = float(with_background)
        assert torch.equal(out.seg_logits.data, expected)


def test_without_background_argmax_over_tag_maps(tiny_model_cfg, monkeypatch):
    _forced(monkeypatch, [0, 2], {0: (0.7, 0.2, 0.2, 0.7), 2: (0.3, 0.8, 0.8, 0.3)})
    model = tiny_model_cfg(with_background=False)
    out = model.predict([_normalised(16, 64)])[0]
    logits, pred = out.seg_logits.data, out.pred_sem_seg.data[0]
    assert logits.shape == (3, 16, 64) and model.num_classes == 3
    assert torch.equal(logits[1], torch.zeros_like(logits[1]))
    expected = torch.where(logits[0] >= logits[2], 0, 2)
    assert torch.equal(pred, expected) and set(pred.unique().tolist()) == {0, 2}


@pytest.mark.classic
def test_slide_equals_whole_when_the_image_fits_one_window(tiny_model_cfg):
    image = _normalised(48, 64, seed=3)
    whole = tiny_model_cfg(test_cfg=dict(inference='whole')).predict([image.clone()])[0]
    slide = tiny_model_cfg(test_cfg=dict(inference='slide', crop_size=64, stride=40)).predict(
        [image.clone()])[0]
    assert whole.tags == slide.tags and whole.tags  # something was tagged
    assert torch.equal(whole.seg_logits.data, slide.seg_logits.data)
    assert torch.equal(whole.pred_sem_seg.data, slide.pred_sem_seg.data)


@pytest.mark.classic
def test_slide_averages_overlapping_windows(tiny_model_cfg, monkeypatch):
    """Each window's CAM is its window index; overlaps hold the mean."""
    model = tiny_model_cfg(test_cfg=dict(inference='slide', crop_size=32, stride=16,
                                         cam_batch_pairs=2))
    counter = dict(n=0)

    def compute_cams(self, images, tag_lists):
        b = images.shape[0]
        ids = torch.arange(counter['n'], counter['n'] + b, dtype=torch.float32)
        counter['n'] += b
        hp, wp = images.shape[-2] // 16, images.shape[-1] // 16
        return ids.view(b, 1, 1, 1).expand(b, len(tag_lists[0]), hp, wp).clone(), (hp, wp)

    monkeypatch.setattr(CLIPESPseudoLabeler, 'compute_cams', compute_cams)
    cams = model.slide_cams(_normalised(32, 64), [1])
    boxes = slide_windows(32, 64, (32, 32), (16, 16))
    assert boxes == [(0, 32, 0, 32), (0, 32, 16, 48), (0, 32, 32, 64)]
    assert counter['n'] == 3  # 2 windows, then 1 (cam_batch_pairs=2, one tag)
    expected = torch.tensor([0.] * 16 + [0.5] * 16 + [1.5] * 16 + [2.] * 16)
    assert torch.allclose(cams[0], expected.expand(32, 64), atol=1e-3)


def test_tags_once_per_image_and_all_classes_option(tiny_model_cfg, monkeypatch):
    calls = _forced(monkeypatch, [1], {c: (1, 0, 0, 0) for c in range(3)})
    model = tiny_model_cfg(test_cfg=dict(inference='slide', crop_size=32, stride=16))
    assert model.predict([_normalised(48, 80)])[0].tags == [1]
    assert calls['tag'] == 1  # once for the image, not per window
    every = tiny_model_cfg(all_classes_as_tags=True)
    assert every.tagger is None
    assert every.predict([_normalised(32, 32)])[0].tags == [0, 1, 2]
    assert calls['tag'] == 1


def test_tag_ratio_overrides_the_taggers_threshold(tiny_model_cfg, monkeypatch):
    scores = torch.tensor([[0.10, 0.40, 0.90]])

    def tag(self, images):
        return SimpleNamespace(tags=torch.tensor([[False, False, True]]), p_final=scores)

    monkeypatch.setattr(TagCLIP, 'tag', tag)
    image = _normalised(32, 32)
    assert tiny_model_cfg().image_tags(image) == [2]  # the tagger's own tags
    # t = 0.1 + r * 0.8: r = 0.3 -> 0.34 keeps 0.40; r = 0.45 -> 0.46 does not.
    assert tiny_model_cfg(tag_ratio=0.3).image_tags(image) == [1, 2]
    assert tiny_model_cfg(tag_ratio=0.45).image_tags(image) == [2]


def test_vocabulary_from_the_dataset(tiny_model_cfg):
    model = tiny_model_cfg(labeler=dict(class_names=None), tagger=dict(class_names=None))
    assert model.class_names is None
    with pytest.raises(RuntimeError, match='vocabulary'):
        model.predict([_normalised(32, 32)])
    with pytest.raises(ValueError, match="class 0 to be 'background'"):
        model.set_vocabulary(['wall', 'sky', 'road'])
    model.set_vocabulary(['background', 'wall', 'sky', 'road'])
    assert model.class_names == ('wall', 'sky', 'road') and model.num_classes == 4
    # 'sky' and 'road' are classes now: no longer background competitors.
    assert model.labeler.background_words == () and model.tagger.background_words == ()
    no_bg = tiny_model_cfg(with_background=False, labeler=dict(class_names=None),
                           tagger=dict(class_names=None))
    no_bg.set_vocabulary(['wall', 'sky'])
    assert no_bg.class_names == ('wall', 'sky') and no_bg.num_classes == 2
    assert no_bg.labeler.background_words == ('road', )


def test_old_test_cfg_mode_key_names_its_new_name(tiny_model_cfg):
    with pytest.raises(ValueError, match="'mode' is now 'inference'"):
        tiny_model_cfg(test_cfg=dict(mode='slide'))
    with pytest.raises(ValueError, match=r"unknown test_cfg keys \['windows'\]"):
        tiny_model_cfg(test_cfg=dict(windows=2))


def test_tensor_mode_returns_input_size_logits(tiny_model_cfg):
    """``forward(mode='tensor')`` returns a (B, C, H, W) tensor, as mmseg's segmentors do.

    ``predict``'s logits when the original size is the input's.
    """
    model = tiny_model_cfg()
    images = torch.stack([_normalised(32, 48, seed=s) for s in (1, 2)])
    logits = model(images, mode='tensor')
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, model.num_classes, 32, 48)
    samples = model.predict(list(images))
    for b, sample in enumerate(samples):
        torch.testing.assert_close(logits[b], sample.seg_logits.data)
    with pytest.raises(ValueError, match='one size'):
        model._forward([_normalised(32, 48), _normalised(32, 64)])


def test_segmentor_shares_the_frozen_plumbing(tiny_model_cfg):
    """One base: no placeholder vocabulary, eval mode kept, nothing to train."""
    from tagclip_mmseg.models.clip.frozen_model import FrozenModel
    model = tiny_model_cfg(labeler=dict(class_names=None), tagger=dict(class_names=None))
    assert isinstance(model, FrozenModel) and isinstance(model.labeler, FrozenModel)
    assert model.labeler.class_names is None and model.class_names is None
    assert model.train() is model
    assert not any(m.training for m in model.modules())
    with pytest.raises(RuntimeError, match='training-free'):
        model.train_step({}, None)


def test_bad_arguments_say_what_to_do(tiny_model_cfg):
    with pytest.raises(ValueError, match='same classes'):
        tiny_model_cfg(labeler=dict(class_names=None))
    with pytest.raises(ValueError, match="'whole' or 'slide'"):
        tiny_model_cfg(test_cfg=dict(inference='sliding'))
    with pytest.raises(ValueError, match='on TagCLIPSegmentor itself'):
        tiny_model_cfg(labeler=dict(crf=dict()))
    with pytest.raises(ValueError, match='share class indices'):
        tiny_model_cfg(tagger=dict(class_names=['cat']))
    with pytest.raises(RuntimeError, match='training-free'):
        tiny_model_cfg().loss(None, None)


# ------------------------------------------------------------------ memory
#: Peak memory (MiB above the loaded model) allowed for one Cityscapes-size
#: image (2048x1024, the protocol's resize to 1120x560, 36 windows of 224)
#: with a CAM for each of the 19 classes. The outputs themselves take about
#: 0.35 GiB (the 19 CAMs resized to 2048x1024, the 19-channel seg_logits and
#: the label map); accumulating windows at the original size, or keeping
#: every window's maps at full size, would take several GiB.
LARGE_IMAGE_BOUND_MIB = 900


@pytest.mark.slow
def test_large_image_peak_memory_is_bounded(tmp_path):
    proc = subprocess.run(
        [sys.executable, 'tools/benchmark_open_vocab.py', '--tiny', '--all-classes-as-tags',
         '--work-dir', str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env=tool_env(ROOT))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert '19 tags' in proc.stdout and '36 windows' in proc.stdout, proc.stdout
    peak = int(re.search(r'PEAK_ABOVE_MODEL_MIB (-?\d+)', proc.stdout).group(1))
    assert 0 < peak < LARGE_IMAGE_BOUND_MIB, proc.stdout

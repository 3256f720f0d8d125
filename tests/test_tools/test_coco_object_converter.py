"""tools/dataset_converters/coco_object.py on fabricated inputs.

Fabricated stuffthingmaps and a fabricated instances json (``--from-instances``).

Polygon rectangles ``[x0, y0, x1, y0, x1, y1, x0, y1]`` cover rows
``y0..y1-1`` and columns ``x0..x1-1`` in pycocotools, so the expected masks
below are painted by hand with slices.
"""
import importlib.util
import json
import os.path as osp
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from tagclip_mmseg.datasets import COCOMultiLabelDataset, COCOObjectTaggedSegDataset
from tagclip_mmseg.testing.checkout import repo_root
from tagclip_mmseg.utils import COCO_CATEGORY_IDS, COCO_CLASSES, voc_palette

REPO = repo_root(__file__)


def _load_tool():
    name = 'tools_dataset_converters_coco_object'
    if name not in sys.modules:  # registered so that worker processes can pickle its functions
        spec = importlib.util.spec_from_file_location(
            name, osp.join(REPO, 'tools', 'dataset_converters', 'coco_object.py'))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


tool = _load_tool()

# Mask values (1 + position in the ascending category ids) of the categories used.
PERSON, CAR, DOG, CUP, TABLE, TOOTHBRUSH = 1, 3, 17, 42, 61, 80


def _rect(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _uncompressed_rle(mask):
    """COCO's crowd format: run lengths in column-major order, starting with zeros."""
    flat = np.asarray(mask, dtype=np.uint8).ravel(order='F')
    edges = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat[0]:
        counts = [0] + counts
    return dict(size=list(mask.shape), counts=counts)


def _compressed_rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(size=rle['size'], counts=rle['counts'].decode('ascii'))


def _instances():
    crowd = np.zeros((6, 8), bool)
    crowd[0:2, 0:3] = True  # 6 pixels
    car = np.zeros((6, 8), bool)
    car[4:6, 6:8] = True
    anns = [
        # image 1 (10 x 12): a cup listed before the table it stands on, a person
        dict(id=3, image_id=1, category_id=47, iscrowd=0, segmentation=_rect(2, 2, 5, 5)),
        dict(id=5, image_id=1, category_id=67, iscrowd=0, segmentation=_rect(0, 0, 10, 8)),
        dict(id=7, image_id=1, category_id=1, iscrowd=0, segmentation=_rect(8, 6, 12, 10)),
        # image 2 (6 x 8): a crowd RLE and a dog of equal area overlapping at (1, 2), a car
        dict(id=8, image_id=2, category_id=90, iscrowd=1, segmentation=_uncompressed_rle(crowd)),
        dict(id=9, image_id=2, category_id=18, iscrowd=0, segmentation=_rect(2, 1, 5, 3)),
        dict(id=11, image_id=2, category_id=3, iscrowd=0, segmentation=_compressed_rle(car)),
    ]
    images = [dict(id=i, file_name=f'{i:012d}.jpg', height=h, width=w)
              for i, h, w in ((3, 5, 5), (2, 6, 8), (1, 10, 12))]  # image 3: no annotation
    categories = [dict(id=c, name=f'c{c}') for c in reversed(COCO_CATEGORY_IDS)]
    return dict(images=images, annotations=anns, categories=categories)


def _expected(crowd_value=TOOTHBRUSH):
    one = np.zeros((10, 12), np.uint8)
    one[0:8, 0:10] = TABLE  # largest, painted first
    one[2:5, 2:5] = CUP
    one[6:10, 8:12] = PERSON
    two = np.zeros((6, 8), np.uint8)
    two[0:2, 0:3] = crowd_value
    two[1:3, 2:5] = DOG  # same area as the crowd region, later in the json: on top
    two[4:6, 6:8] = CAR
    return {'000000000001': one, '000000000002': two}


@pytest.fixture
def coco_root(tmp_path):
    (tmp_path / 'annotations').mkdir()
    (tmp_path / 'annotations' / 'instances_val2017.json').write_text(json.dumps(_instances()))
    for image in _instances()['images']:
        path = tmp_path / 'val2017' / image['file_name']
        path.parent.mkdir(exist_ok=True)
        Image.new('RGB', (image['width'], image['height']), (120, 60, 30)).save(path)
    return tmp_path


def _mask_path(root, stem, split='val2017'):
    return root / 'SegmentationClass' / split / f'{stem}.png'


def _convert(root, *args):
    return tool.main([str(root), '--from-instances', '--no-progress', *args])


def test_value_names():
    assert [COCO_CLASSES[v - 1] for v in (PERSON, CAR, DOG, CUP, TABLE, TOOTHBRUSH)] == [
        'person', 'car', 'dog', 'cup', 'diningtable', 'toothbrush']


def test_masks_and_id_list(coco_root, capsys):
    assert _convert(coco_root) == 0
    assert '3 images, 2 with annotations (listed; the others are all background); 3 masks ' \
        'written' in capsys.readouterr().out
    assert (coco_root / 'val2017_ids.txt').read_text() == '000000000001\n000000000002\n'
    with Image.open(_mask_path(coco_root, '000000000003')) as img:  # no annotation
        np.testing.assert_array_equal(np.asarray(img), np.zeros((5, 5), np.uint8))
    palette = np.asarray(voc_palette(256), np.uint8).reshape(-1)
    for stem, expected in _expected().items():
        with Image.open(_mask_path(coco_root, stem)) as img:
            assert img.mode == 'P'
            assert np.array_equal(np.frombuffer(bytes(img.getpalette()), np.uint8), palette)
            np.testing.assert_array_equal(np.asarray(img), expected)


def test_crowd_ignore_and_no_palette(coco_root):
    assert _convert(coco_root, '--crowd', 'ignore', '--no-palette') == 0
    with Image.open(_mask_path(coco_root, '000000000002')) as img:
        assert img.mode == 'L'
        np.testing.assert_array_equal(np.asarray(img), _expected(tool.IGNORE_INDEX)['000000000002'])


def test_rerun_skips_existing_and_overwrite_rebuilds(coco_root, capsys):
    assert _convert(coco_root) == 0
    first = {p.name: p.read_bytes() for p in (coco_root / 'SegmentationClass/val2017').iterdir()}
    capsys.readouterr()
    stale = _mask_path(coco_root, '000000000001')
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(stale)
    assert _convert(coco_root) == 0
    assert '0 masks written, 3 already existed' in capsys.readouterr().out
    assert np.asarray(Image.open(stale)).max() == 0  # kept as found
    assert _convert(coco_root, '--overwrite') == 0
    assert '3 masks written, 0 already existed' in capsys.readouterr().out
    now = {p.name: p.read_bytes() for p in (coco_root / 'SegmentationClass/val2017').iterdir()}
    assert now == first  # byte-identical rebuild
    assert (coco_root / 'val2017_ids.txt').read_text() == '000000000001\n000000000002\n'


def test_worker_processes_give_the_same_files(coco_root):
    assert _convert(coco_root) == 0
    serial = {p.name: p.read_bytes() for p in (coco_root / 'SegmentationClass/val2017').iterdir()}
    assert _convert(coco_root, '--overwrite', '--nproc', '2') == 0
    parallel = {p.name: p.read_bytes()
                for p in (coco_root / 'SegmentationClass/val2017').iterdir()}
    assert parallel == serial


def test_dataset_reads_masks_and_derives_tags(coco_root):
    assert _convert(coco_root) == 0
    # The config's layout: configs/_base_/datasets/coco-object_val_pseudo.py
    ds = COCOObjectTaggedSegDataset(
        data_root=str(coco_root), ann_file='val2017_ids.txt',
        data_prefix=dict(img_path='val2017', seg_map_path='SegmentationClass/val2017'),
        tag_source='gt', on_missing='raise')
    infos = [ds.get_data_info(i) for i in range(len(ds))]
    assert [(d['img_id'], d['tags']) for d in infos] == [
        ('000000000001', [PERSON - 1, CUP - 1, TABLE - 1]),
        ('000000000002', [CAR - 1, DOG - 1, TOOTHBRUSH - 1])]
    # The same labels as the multi-label dataset reads from the json.
    labels = COCOMultiLabelDataset(data_root=str(coco_root),
                                   ann_file='annotations/instances_val2017.json',
                                   data_prefix=dict(img_path='val2017'))
    assert [(d['img_id'], d['gt_label']) for d in map(labels.get_data_info, range(2))] == \
        [(d['img_id'], d['tags']) for d in infos]


def test_paint_instances_tie_and_empty_polygon():
    mask = tool.paint_instances(4, 4, [(5, _rect(0, 0, 2, 2)), (6, []), (7, _rect(1, 1, 3, 3))])
    expected = np.zeros((4, 4), np.uint8)
    expected[0:2, 0:2] = 5
    expected[1:3, 1:3] = 7  # equal areas: json order, the later one on top
    np.testing.assert_array_equal(mask, expected)
    assert not tool.paint_instances(3, 3, []).any()


@pytest.mark.parametrize('edit, message', [
    (lambda c: c['categories'].pop(), 'does not have the 80 COCO categories'),
    (lambda c: c['annotations'][0].update(category_id=12), 'not a COCO category'),
    (lambda c: c['annotations'][3]['segmentation'].update(size=[7, 8]), 'differs from the image'),
    (lambda c: c['annotations'][0].update(image_id=99), 'not in its images list'),
])
def test_bad_json_is_reported(coco_root, capsys, edit, message):
    coco = _instances()
    edit(coco)
    (coco_root / 'annotations' / 'instances_val2017.json').write_text(json.dumps(coco))
    assert _convert(coco_root) == 1
    assert message in capsys.readouterr().err
    assert not (coco_root / 'val2017_ids.txt').exists()


def test_missing_split(coco_root, capsys):
    assert _convert(coco_root, '--splits', 'train2014') == 1
    assert 'instances_train2014.json not found' in capsys.readouterr().err


def test_paint_instances_beyond_255():
    # pycocotools' area() overflows past 255 RLEs; ranks then need uint16.
    instances = [(i % 80 + 1, _rect(i % 20, i // 20, i % 20 + 1, i // 20 + 1)) for i in range(300)]
    expected = np.zeros((20, 20), np.uint8).reshape(-1)
    expected[:300] = np.arange(300) % 80 + 1
    np.testing.assert_array_equal(tool.paint_instances(20, 20, instances), expected.reshape(20, 20))


# ------------------------------------------------------- stuffthingmaps (default)
# stuffthingmap values (COCO category id - 1) and the COCO-Object value each
# must become, by hand: person id 1 -> class 1; stop sign id 13 -> class 12
# (id 12 is unused, so naive "value + 1" would say 13); toothbrush id 90 ->
# class 80; stuff (91 'banner', 181 'wood') and unlabeled 255 -> background 0.
STUFF_PERSON, STUFF_STOP_SIGN, STUFF_TOOTHBRUSH, STUFF_BANNER, STUFF_WOOD = 0, 12, 89, 91, 181
STOP_SIGN = 12


def _stuffthingmaps():
    """{stem: (stuffthingmap, expected COCO-Object mask)}; the last image has no things."""
    things = np.full((6, 7), STUFF_BANNER, np.uint8)
    things[0, :] = 255
    things[2:4, 1:3] = STUFF_PERSON
    things[3:6, 4:6] = STUFF_STOP_SIGN
    things[5, 0] = STUFF_TOOTHBRUSH
    expected = np.zeros((6, 7), np.uint8)
    expected[2:4, 1:3] = PERSON
    expected[3:6, 4:6] = STOP_SIGN
    expected[5, 0] = TOOTHBRUSH
    stuff = np.full((4, 5), STUFF_WOOD, np.uint8)
    stuff[1, 1] = 255
    return {'000000000139': (things, expected),
            '000000000285': (stuff, np.zeros((4, 5), np.uint8))}


@pytest.fixture
def stuff_root(tmp_path):
    """Mmseg's COCO-Stuff 164k layout, plus a converted COCO-Stuff mask to ignore."""
    for stem, (stuffthingmap, _) in _stuffthingmaps().items():
        for sub, suffix, obj in (
                ('images', '.jpg', Image.new('RGB', stuffthingmap.shape[::-1], (90, 80, 70))),
                ('annotations', '.png', Image.fromarray(stuffthingmap)),
                ('annotations', '_labelTrainIds.png', Image.fromarray(stuffthingmap))):
            path = tmp_path / sub / 'val2017' / f'{stem}{suffix}'
            path.parent.mkdir(parents=True, exist_ok=True)
            obj.save(path)
    return tmp_path


def _stuff_mask(root, stem):
    with Image.open(root / 'annotations' / 'val2017' / f'{stem}_instanceTrainIds.png') as img:
        return img.mode, np.asarray(img)


def test_value_names_of_the_stuffthingmap_cases():
    assert COCO_CLASSES[STOP_SIGN - 1] == 'stop sign'
    assert COCO_CATEGORY_IDS[STOP_SIGN - 1] == STUFF_STOP_SIGN + 1 == 13


def test_stuffthingmaps_become_the_configs_masks(stuff_root, capsys):
    assert tool.main([str(stuff_root), '--no-progress']) == 0
    assert 'val2017: 2 images; 2 masks written' in capsys.readouterr().out
    for stem, (_, expected) in _stuffthingmaps().items():
        mode, mask = _stuff_mask(stuff_root, stem)
        assert mode == 'P'
        np.testing.assert_array_equal(mask, expected)
    # The stuffthingmaps and mmseg's converted masks are left as they were.
    names = sorted(p.name for p in (stuff_root / 'annotations' / 'val2017').iterdir())
    assert len(names) == 6 and not (stuff_root / 'val2017_ids.txt').exists()


def test_stuffthingmap_lut_is_the_peers_convention():
    things = np.array([[cat_id - 1 for cat_id in COCO_CATEGORY_IDS]], np.uint8)
    # Things: 1 + position of the category id among the 80 used ids.
    np.testing.assert_array_equal(tool.stuffthingmap_to_object(things)[0], np.arange(1, 81))
    stuff = np.array([list(range(91, 182)) + [255]], np.uint8)
    assert not tool.stuffthingmap_to_object(stuff).any()
    for bad in (11, 90, 182, 254):  # unused thing ids, beyond the stuff ids
        with pytest.raises(ValueError, match=f'values \\[{bad}\\] are not COCO-Stuff ids'):
            tool.stuffthingmap_to_object(np.array([[0, bad]], np.uint8))


def test_stuffthingmaps_missing_or_bad(stuff_root, capsys):
    stem = '000000000285'
    (stuff_root / 'annotations' / 'val2017' / f'{stem}.png').unlink()
    assert tool.main([str(stuff_root), '--no-progress']) == 1
    err = capsys.readouterr().err
    assert '1 of the 2 images' in err and f'{stem}.png' in err
    assert 'stuffthingmaps_trainval2017.zip' in err
    Image.fromarray(np.full((4, 5), 200, np.uint8)).save(
        stuff_root / 'annotations' / 'val2017' / f'{stem}.png')
    assert tool.main([str(stuff_root), '--no-progress']) == 1
    assert 'values [200] are not COCO-Stuff ids' in capsys.readouterr().err
    assert tool.main([str(stuff_root), '--suffix', '.png']) == 1
    assert 'would overwrite the stuffthingmaps' in capsys.readouterr().err
    assert tool.main([str(stuff_root / 'nowhere')]) == 1
    assert 'images/val2017 not found' in capsys.readouterr().err


def test_stuffthingmaps_rerun_and_workers(stuff_root, capsys):
    assert tool.main([str(stuff_root), '--no-progress', '--no-palette']) == 0
    first = {stem: _stuff_mask(stuff_root, stem) for stem in _stuffthingmaps()}
    assert {mode for mode, _ in first.values()} == {'L'}
    capsys.readouterr()
    assert tool.main([str(stuff_root), '--no-progress']) == 0
    assert '0 masks written, 2 already existed' in capsys.readouterr().out
    assert tool.main([str(stuff_root), '--no-progress', '--no-palette', '--overwrite',
                      '--nproc', '2']) == 0
    for stem, (mode, mask) in first.items():
        again = _stuff_mask(stuff_root, stem)
        assert again[0] == mode and np.array_equal(again[1], mask)


def test_crowd_needs_the_instances_source(stuff_root):
    with pytest.raises(SystemExit):
        tool.parse_args([str(stuff_root), '--crowd', 'ignore'])

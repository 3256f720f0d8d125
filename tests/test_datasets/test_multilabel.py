"""Multi-label datasets on tiny fabricated VOC / COCO / folder trees."""
import json

import numpy as np
import pytest
from PIL import Image

from tagclip_mmseg.datasets import (COCOMultiLabelDataset, COCOStuffMultiLabelDataset,
                                    LabelFileError, MultiLabelImageFolder, VOCMultiLabelDataset)
from tagclip_mmseg.utils import COCO_CATEGORY_IDS, COCO_CLASSES


def _image(path, h=20, w=30, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 127, np.uint8)).save(path, format=fmt)
    return str(path)


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / 'VOC2007'
    for name in ('000001', '000002', '000004'):
        _image(root / 'JPEGImages' / f'{name}.jpg')
    (tmp_path / 'test_cls.txt').write_text('000001 11 14\n000002 18\n000003 2\n000004\n')
    return tmp_path


def test_voc_list_dataset(voc_root):
    ds = VOCMultiLabelDataset(data_root=str(voc_root / 'VOC2007'),
                              ann_file=str(voc_root / 'test_cls.txt'))
    assert len(ds) == 3 and ds.num_missing == 1
    assert ds.metainfo['classes'][14] == 'person'
    info = ds.get_data_info(0)
    assert info['img_id'] == '000001' and info['gt_label'] == [11, 14]
    assert info['img_path'].endswith('VOC2007/JPEGImages/000001.jpg')
    assert ds.get_cat_ids(1) == [18] and ds.get_cat_ids(2) == []
    with pytest.raises(FileNotFoundError, match='000003'):
        VOCMultiLabelDataset(data_root=str(voc_root / 'VOC2007'),
                             ann_file=str(voc_root / 'test_cls.txt'), on_missing='raise')


def test_voc_rejects_unknown_class_index(voc_root):
    bad = voc_root / 'bad.txt'
    bad.write_text('000001 11\n000002 20\n')
    with pytest.raises(LabelFileError, match=r'bad.txt:2.*outside the 20 classes'):
        VOCMultiLabelDataset(data_root=str(voc_root / 'VOC2007'), ann_file=str(bad))


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / 'photos'
    _image(root / 'a.jpg')
    _image(root / 'sub' / 'b.png')
    _image(root / 'c.WEBP', fmt='WEBP')
    _image(root / '.hidden.jpg')
    (root / 'notes.txt').write_text('not an image')
    return root


CLASSES = dict(classes=('cat', 'dog'))


def test_folder_without_labels(folder):
    ds = MultiLabelImageFolder(data_prefix=dict(img_path=str(folder)), metainfo=CLASSES)
    assert [ds.get_data_info(i)['img_id'] for i in range(len(ds))] == ['a', 'c', 'sub/b']
    assert 'gt_label' not in ds.get_data_info(0)
    assert ds.get_cat_ids(0) == []


def test_folder_with_labels_and_id_list(folder, tmp_path):
    labels = tmp_path / 'labels.txt'
    labels.write_text('sub/b 1 0\na 0\nghost 1\n')
    ds = MultiLabelImageFolder(data_root=str(tmp_path), data_prefix=dict(img_path='photos'),
                               ann_file='labels.txt', metainfo=CLASSES)
    assert [(d['img_id'], d['gt_label']) for d in map(ds.get_data_info, range(len(ds)))] == [
        ('sub/b', [0, 1]), ('a', [0])]
    assert ds.num_missing == 1
    (tmp_path / 'keep.txt').write_text('a\n')
    ds = MultiLabelImageFolder(data_root=str(tmp_path), data_prefix=dict(img_path='photos'),
                               ann_file='labels.txt', id_list='keep.txt', metainfo=CLASSES)
    assert len(ds) == 1 and ds.get_data_info(0)['img_id'] == 'a'
    (tmp_path / 'keep.txt').write_text('c\n')
    with pytest.raises(ValueError, match='no line in the label'):
        MultiLabelImageFolder(data_root=str(tmp_path), data_prefix=dict(img_path='photos'),
                              ann_file='labels.txt', id_list='keep.txt', metainfo=CLASSES)
    with pytest.raises(FileNotFoundError, match='ghost'):
        MultiLabelImageFolder(data_root=str(tmp_path), data_prefix=dict(img_path='photos'),
                              ann_file='labels.txt', metainfo=CLASSES, on_missing='raise')


def test_folder_id_clash(tmp_path):
    _image(tmp_path / 'x.jpg')
    _image(tmp_path / 'x.png')
    with pytest.raises(ValueError, match='share an id'):
        MultiLabelImageFolder(data_prefix=dict(img_path=str(tmp_path)), metainfo=CLASSES)


@pytest.mark.parametrize('metainfo, message', [
    (None, 'needs metainfo'), (dict(classes=()), 'empty'), (dict(classes=('a', 'a')), 'unique'),
    (dict(classes=('a', 3)), 'non-empty strings'), (dict(classes=('a', ' ')), 'non-empty')])
def test_folder_validates_classes(folder, metainfo, message):
    with pytest.raises(ValueError, match=message):
        MultiLabelImageFolder(data_prefix=dict(img_path=str(folder)), metainfo=metainfo)


def test_folder_accepts_synonym_lists(folder):
    """A class may be a list of synonyms (README, docs/add_dataset.md)."""
    from tagclip_mmseg.evaluation.multilabel_metrics import _fg_class_names
    ds = MultiLabelImageFolder(data_prefix=dict(img_path=str(folder)),
                               metainfo=dict(classes=('cat', ['person', 'people', 'human'])))
    assert ds.metainfo['classes'] == ('cat', ('person', 'people', 'human'))
    assert ds.num_classes == 2
    # The metric's log table names a synonym class by its first name.
    assert _fg_class_names(ds.metainfo, 2) == ('cat', 'person')


@pytest.mark.parametrize('classes, message', [
    (('cat', []), 'non-empty lists of them'), (('cat', ['dog', ' ']), 'non-empty lists'),
    (('cat', ['dog', 3]), 'non-empty lists'), ((['a', 'b'], ('a', 'b')), 'unique')])
def test_folder_refuses_bad_synonym_lists(folder, classes, message):
    with pytest.raises(ValueError, match=message):
        MultiLabelImageFolder(data_prefix=dict(img_path=str(folder)),
                              metainfo=dict(classes=classes))


def test_classes_from_file(folder, tmp_path):
    (tmp_path / 'classes.txt').write_text('cat\ndog\nbird\n')
    ds = MultiLabelImageFolder(data_prefix=dict(img_path=str(folder)),
                               metainfo=dict(classes=str(tmp_path / 'classes.txt')))
    assert ds.metainfo['classes'] == ('cat', 'dog', 'bird')


def _coco_json(path, categories=COCO_CATEGORY_IDS):
    coco = dict(
        images=[dict(id=i, file_name=f'COCO_val2014_{i:012d}.jpg', height=20, width=30)
                for i in (4, 1, 2, 3)],
        annotations=[
            dict(id=10, image_id=1, category_id=90, iscrowd=0),
            dict(id=11, image_id=1, category_id=1, iscrowd=0),
            dict(id=12, image_id=1, category_id=1, iscrowd=0),
            dict(id=13, image_id=2, category_id=3, iscrowd=1),
            dict(id=14, image_id=4, category_id=2, iscrowd=0),
        ],
        categories=[dict(id=c, name=f'c{c}') for c in reversed(categories)])
    path.write_text(json.dumps(coco))
    return str(path)


@pytest.fixture
def coco_root(tmp_path):
    for i in (1, 2, 3):
        _image(tmp_path / 'val2014' / f'COCO_val2014_{i:012d}.jpg')
    _coco_json(tmp_path / 'instances_val2014.json')
    return tmp_path


def test_coco_json(coco_root):
    ds = COCOMultiLabelDataset(data_root=str(coco_root), ann_file='instances_val2014.json',
                               data_prefix=dict(img_path='val2014'))
    infos = [ds.get_data_info(i) for i in range(len(ds))]
    # image 3 has no annotation; image 4 has no file
    assert [(d['img_id'], d['gt_label']) for d in infos] == [
        ('COCO_val2014_000000000001', [0, 79]), ('COCO_val2014_000000000002', [2])]
    assert ds.num_missing == 1
    assert ds.metainfo['classes'] == COCO_CLASSES
    ds = COCOMultiLabelDataset(data_root=str(coco_root), ann_file='instances_val2014.json',
                               data_prefix=dict(img_path='val2014'), include_crowd=False,
                               keep_empty=True)
    assert [(d['img_id'][-1], d['gt_label']) for d in map(ds.get_data_info, range(len(ds)))] == [
        ('1', [0, 79]), ('2', []), ('3', [])]


def test_coco_custom_categories(coco_root):
    path = _coco_json(coco_root / 'small.json', categories=(1, 2, 3, 90))
    with pytest.raises(ValueError, match='4 categories but the dataset has 80'):
        COCOMultiLabelDataset(ann_file=path, data_prefix=dict(img_path=str(coco_root / 'val2014')))
    ds = COCOMultiLabelDataset(ann_file=path, data_prefix=dict(img_path=str(coco_root / 'val2014')),
                               metainfo=dict(classes=('person', 'bicycle', 'car', 'toothbrush')))
    assert ds.get_data_info(0)['gt_label'] == [0, 3]


def test_cocostuff_list_in_182_space(tmp_path):
    _image(tmp_path / 'val2017' / '000000000139.jpg')
    (tmp_path / 'val.txt').write_text('000000000139 0 61 156\n')
    ds = COCOStuffMultiLabelDataset(ann_file=str(tmp_path / 'val.txt'),
                                    data_prefix=dict(img_path=str(tmp_path / 'val2017')))
    classes = ds.metainfo['classes']
    assert len(classes) == 171
    assert [classes[i] for i in ds.get_cat_ids(0)] == ['person', 'chair', 'sky-other']

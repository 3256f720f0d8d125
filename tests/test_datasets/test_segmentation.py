"""Tagged segmentation datasets: tag sources, missing files, label spaces."""
import numpy as np
import pytest
from PIL import Image

from tagclip_mmseg.datasets import (COCOObjectTaggedSegDataset, COCOStuff27TaggedSegDataset,
                                    LabelFileError, TaggedSegDataset, VOCTaggedSegDataset)
from tagclip_mmseg.utils import COCOSTUFF_27_CLASSES, COCOSTUFF_171_CLASSES, voc_palette


def _image(path, h=20, w=30):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)


def _mask(path, values, palette=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((20, 30), np.uint8)
    for i, v in enumerate(values):
        arr[i, :] = v
    img = Image.fromarray(arr, 'L')
    if palette:
        img = img.convert('P')
        img.putpalette(sum(voc_palette(256), []))
    img.save(path)


@pytest.fixture
def voc(tmp_path):
    root = tmp_path / 'VOC2012'
    for name in ('a', 'b', 'c'):
        _image(root / 'JPEGImages' / f'{name}.jpg')
    _mask(root / 'SegmentationClass' / 'a.png', [0, 15, 255, 9])  # person, chair
    _mask(root / 'SegmentationClass' / 'b.png', [0, 255])  # nothing
    (root / 'val.txt').write_text('a\nb\nc\n')
    return root


def _infos(ds):
    return [ds.get_data_info(i) for i in range(len(ds))]


def test_voc_metainfo(voc):
    ds = VOCTaggedSegDataset(data_root=str(voc), ann_file='val.txt')
    assert ds.metainfo['classes'][0] == 'background' and len(ds.metainfo['classes']) == 21
    assert len(ds.metainfo['tag_classes']) == 20 and ds.metainfo['tag_classes'][14] == 'person'
    assert ds.metainfo['palette'] == voc_palette(21)
    assert [d['img_id'] for d in _infos(ds)] == ['a', 'b', 'c']
    assert all('tags' not in d and 'seg_map_path' not in d for d in _infos(ds))  # tag_source none


def test_tags_from_gt_masks(voc):
    ds = VOCTaggedSegDataset(data_root=str(voc), ann_file='val.txt', tag_source='gt',
                             data_prefix=dict(img_path='JPEGImages',
                                              seg_map_path='SegmentationClass'))
    infos = _infos(ds)
    assert [(d['img_id'], d['tags']) for d in infos] == [('a', [8, 14]), ('b', [])]
    assert infos[0]['seg_map_path'].endswith('SegmentationClass/a.png')
    assert ds.skipped == dict(missing_images=0, missing_masks=1, no_tags=1)
    with pytest.raises(FileNotFoundError, match='segmentation maps are missing'):
        VOCTaggedSegDataset(data_root=str(voc), ann_file='val.txt', tag_source='gt',
                            on_missing='raise',
                            data_prefix=dict(img_path='JPEGImages',
                                             seg_map_path='SegmentationClass'))


def test_tags_from_file(voc, tmp_path):
    tags = tmp_path / 'tags.txt'
    tags.write_text('a 14 8\nb\nzzz 3\n')  # zzz is outside the split: ignored
    common = dict(data_root=str(voc), ann_file='val.txt', tag_source='file', tags_file=str(tags))
    with pytest.raises(ValueError, match='1 images have no line.*Did the tagger finish'):
        VOCTaggedSegDataset(**common)
    ds = VOCTaggedSegDataset(**common, on_untagged='empty')
    assert [(d['img_id'], d['tags']) for d in _infos(ds)] == [('a', [14, 8]), ('b', []),
                                                              ('c', [])]
    assert ds.skipped['no_tags'] == 2 and ds.skipped['untagged'] == 1
    ds = VOCTaggedSegDataset(**common, on_untagged='skip')
    assert [d['img_id'] for d in _infos(ds)] == ['a', 'b']


def test_tags_for_missing_images_without_split(voc, tmp_path):
    tags = tmp_path / 'tags.txt'
    tags.write_text('a 1\nb 2\nc 3\nghost 4\n')
    ds = VOCTaggedSegDataset(data_root=str(voc), tag_source='file', tags_file=str(tags))
    assert [d['img_id'] for d in _infos(ds)] == ['a', 'b', 'c']
    assert ds.skipped['tags_without_image'] == 1
    with pytest.raises(FileNotFoundError, match='ghost'):
        VOCTaggedSegDataset(data_root=str(voc), tag_source='file', tags_file=str(tags),
                            on_missing='raise')


def test_missing_images_in_split(voc):
    (voc / 'val.txt').write_text('a\nmissing\n')
    ds = VOCTaggedSegDataset(data_root=str(voc), ann_file='val.txt')
    assert len(ds) == 1 and ds.skipped['missing_images'] == 1
    with pytest.raises(FileNotFoundError, match='missing'):
        VOCTaggedSegDataset(data_root=str(voc), ann_file='val.txt', on_missing='raise')


def test_unknown_tag_class_names_file_and_line(voc, tmp_path):
    tags = tmp_path / 'tags.txt'
    tags.write_text('a 1\nb 20\n')
    with pytest.raises(LabelFileError, match=r'tags.txt:2.*outside the 20 classes'):
        VOCTaggedSegDataset(data_root=str(voc), ann_file='val.txt', tag_source='file',
                            tags_file=str(tags))


@pytest.mark.parametrize('kwargs, message', [
    (dict(tag_source='file'), 'needs tags_file'),
    (dict(tag_source='none', tags_file='t.txt'), 'ignored'),
    (dict(tag_source='model'), 'tag_source must be'),
    (dict(tag_source='gt'), 'needs tags_file or GT masks'),
    (dict(on_untagged='zero'), 'on_untagged'),
])
def test_invalid_options(voc, kwargs, message):
    with pytest.raises(ValueError, match=message):
        VOCTaggedSegDataset(data_root=str(voc), ann_file='val.txt', **kwargs)


def test_generic_dataset_with_custom_vocabulary(tmp_path):
    _image(tmp_path / 'imgs' / 'x.png')
    _mask(tmp_path / 'gt' / 'x.png', [0, 2, 255], palette=False)
    ds = TaggedSegDataset(data_root=str(tmp_path), img_suffix='.png', tag_source='gt',
                          data_prefix=dict(img_path='imgs', seg_map_path='gt'),
                          metainfo=dict(classes=('background', 'cat', 'dog')))
    assert ds.metainfo['tag_classes'] == ('cat', 'dog')
    assert ds.metainfo['palette'] == voc_palette(3)
    assert ds.get_data_info(0)['tags'] == [1]
    with pytest.raises(ValueError, match='needs metainfo'):
        TaggedSegDataset(data_root=str(tmp_path), img_suffix='.png',
                         data_prefix=dict(img_path='imgs'))


def test_coco_object_metainfo(tmp_path):
    _image(tmp_path / 'val2017' / '000000000139.jpg')
    _mask(tmp_path / 'ann' / '000000000139.png', [0, 1, 80, 255], palette=False)
    ds = COCOObjectTaggedSegDataset(data_root=str(tmp_path), tag_source='gt',
                                    data_prefix=dict(img_path='val2017', seg_map_path='ann'))
    assert len(ds.metainfo['classes']) == 81 and len(ds.metainfo['palette']) == 81
    assert ds.metainfo['tag_classes'][79] == 'toothbrush'
    assert ds.get_data_info(0)['tags'] == [0, 79]


def test_cocostuff27(tmp_path):
    _image(tmp_path / 'val2017' / '000000000139.jpg')
    # 182-space: person (0), sky-other (156), wood (181), unlabeled (255)
    _mask(tmp_path / 'stuff' / '000000000139.png', [0, 156, 181, 255], palette=False)
    ds = COCOStuff27TaggedSegDataset(data_root=str(tmp_path), tag_source='gt',
                                     data_prefix=dict(img_path='val2017', seg_map_path='stuff'))
    meta = ds.metainfo
    assert meta['classes'] == COCOSTUFF_27_CLASSES and meta['tag_classes'] == COCOSTUFF_171_CLASSES
    info = ds.get_data_info(0)
    assert [COCOSTUFF_171_CLASSES[t] for t in info['tags']] == ['person', 'sky-other', 'wood']
    assert info['label_map'][0] == COCOSTUFF_27_CLASSES.index('person')
    assert info['label_map'][156] == COCOSTUFF_27_CLASSES.index('sky')
    assert 255 not in info['label_map']
    # TagCLIP's shipped list stores 182-space ids.
    (tmp_path / 'val.txt').write_text('000000000139 0 156\n')
    ds = COCOStuff27TaggedSegDataset(data_root=str(tmp_path), tag_source='gt',
                                     tags_file=str(tmp_path / 'val.txt'),
                                     tags_index_map='cocostuff182_to_171',
                                     data_prefix=dict(img_path='val2017'))
    assert ds.get_data_info(0)['tags'] == [0, COCOSTUFF_171_CLASSES.index('sky-other')]


@pytest.mark.parametrize('img_suffix', [['.jpg', '.png'], ('.jpg', '.png')])
def test_img_suffix_list(tmp_path, img_suffix):
    """A list (or tuple) of extensions, as mmengine's datasets accept.

    A folder scan picks up every one, a split list takes the first that exists.
    """
    from tagclip_mmseg.datasets import MultiLabelListDataset
    _image(tmp_path / 'img' / 'a.jpg')
    _image(tmp_path / 'img' / 'b.png')
    _image(tmp_path / 'img' / 'c.bmp')  # not listed: ignored by the scan
    classes = ('background', 'cat')
    scan = TaggedSegDataset(data_root=str(tmp_path), data_prefix=dict(img_path='img'),
                            img_suffix=img_suffix, metainfo=dict(classes=classes))
    assert [(d['img_id'], d['img_path'][len(str(tmp_path)):]) for d in _infos(scan)] == [
        ('a', '/img/a.jpg'), ('b', '/img/b.png')]
    (tmp_path / 'split.txt').write_text('b\na\nc\n')
    listed = TaggedSegDataset(data_root=str(tmp_path), data_prefix=dict(img_path='img'),
                              ann_file='split.txt', img_suffix=img_suffix,
                              metainfo=dict(classes=classes))
    assert [d['img_path'][len(str(tmp_path)):] for d in _infos(listed)] == [
        '/img/b.png', '/img/a.jpg']
    assert listed.metainfo['missing_images'] == [
        dict(img_id='c', img_path=str(tmp_path / 'img' / 'c.jpg'), reason='file not found')]
    (tmp_path / 'labels.txt').write_text('b 0\na\nc 0\n')
    tagging = MultiLabelListDataset(data_root=str(tmp_path), data_prefix=dict(img_path='img'),
                                    ann_file='labels.txt', img_suffix=img_suffix,
                                    metainfo=dict(classes=('cat', )))
    assert [(d['img_id'], d['img_path'][len(str(tmp_path)):]) for d in _infos(tagging)] == [
        ('b', '/img/b.png'), ('a', '/img/a.jpg')]


@pytest.mark.parametrize('img_suffix', [7, [], ['.jpg', None], ''])
def test_img_suffix_refused_clearly(tmp_path, img_suffix):
    _image(tmp_path / 'img' / 'a.jpg')
    with pytest.raises(ValueError, match=r"img_suffix must be an extension such as '.jpg' or "
                       r"a list of them"):
        TaggedSegDataset(data_root=str(tmp_path), data_prefix=dict(img_path='img'),
                         img_suffix=img_suffix, metainfo=dict(classes=('background', 'cat')))

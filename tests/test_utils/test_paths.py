"""Ids stay inside the output folder: ``safe_join`` and every writer and tool that uses it.

An id that is absolute, climbs out with ``..`` or leaves through a symbolic
link inside the folder is refused with the id and the folder named; an output
folder that is itself a symbolic link keeps working.
"""
import os
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.structures import PixelData
from mmpretrain.structures import DataSample
from mmseg.structures import SegDataSample
from PIL import Image

from tagclip_mmseg.datasets.utils import MISSING_IMAGES_KEY
from tagclip_mmseg.evaluation import PseudoLabelWriter, TagFileWriter
from tagclip_mmseg.resume import SkipExisting
from tagclip_mmseg.utils import UnsafePathError, safe_join

BAD_IDS = ('../../victim/escape', '/tmp/victim/escape', 'a/../../escape', '..')


def test_safe_join_keeps_ids_inside_the_folder(tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    assert safe_join(out, '2007/000032', '.png') == str(out / '2007' / '000032.png')
    assert safe_join(out, 'name with spaces..v2') == str(out / 'name with spaces..v2')
    for bad in BAD_IDS + ('', ):
        with pytest.raises(UnsafePathError) as info:
            safe_join(out, bad, '.png')
        assert repr(bad) in str(info.value) and str(out) in str(info.value)
    # The folder may be a link; an id may not leave through a link inside it.
    (tmp_path / 'elsewhere').mkdir()
    os.symlink(tmp_path / 'elsewhere', out / 'link')
    with pytest.raises(UnsafePathError, match='symbolic link'):
        safe_join(out, 'link/x', '.png')
    os.symlink(out, tmp_path / 'out_link')
    assert safe_join(tmp_path / 'out_link', 'x', '.png') == str(out / 'x.png')


def _mask_sample(img_id, value=1):
    sample = SegDataSample(metainfo=dict(img_id=img_id, img_path=f'/d/{img_id}.jpg',
                                         ori_shape=(4, 6)))
    sample.pred_sem_seg = PixelData(data=torch.full((1, 4, 6), value, dtype=torch.long))
    return sample.to_dict()


def _files(root):
    return sorted(osp.relpath(osp.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_every_writer_refuses_an_id_that_leaves_its_folder(tmp_path):
    from tagclip_mmseg.visualization import save_result_images
    for i, bad in enumerate(BAD_IDS):
        out = tmp_path / 'root' / 'a' / f'out{i}'
        writer = PseudoLabelWriter(out_dir=str(out), save_cams=True)
        with pytest.raises(UnsafePathError, match='refusing image id'):
            writer.process({}, [_mask_sample(bad)])
        tags = TagFileWriter(out_file=str(out / 'tags.txt'))
        sample = DataSample(metainfo=dict(img_id=bad, img_path='/d/x.jpg'))
        sample.set_pred_score(torch.tensor([0.7, 0.2])).set_pred_label(torch.tensor([0]))
        with pytest.raises(UnsafePathError, match='refusing image id'):
            tags.process({}, [sample.to_dict()])
        # An id the dataset listed but could not find is refused too, at the first batch.
        listed = PseudoLabelWriter(out_dir=str(out / 'listed'))
        listed.dataset_meta = {MISSING_IMAGES_KEY: [dict(img_id=bad, img_path='/d/x.jpg',
                                                         reason='no such file')]}
        with pytest.raises(UnsafePathError, match='refusing image id'):
            listed.process({}, [_mask_sample('fine')])
        assert not (out / 'listed' / 'fine.png').exists()
        skip = SkipExisting(out_dir=str(out))
        with pytest.raises(UnsafePathError):
            skip(dict(img_id=bad, img_path='/d/x.jpg'))
        with pytest.raises(UnsafePathError):
            save_result_images(str(out), bad, np.zeros((4, 6, 3), np.uint8),
                               dict(tags=[], scores={}))
    assert not osp.exists('/tmp/victim/escape.png')
    assert [f for f in _files(tmp_path) if 'escape' in f] == []


def test_writers_work_in_a_linked_output_folder(tmp_path):
    real = tmp_path / 'real'
    real.mkdir()
    os.symlink(real, tmp_path / 'out')
    writer = PseudoLabelWriter(out_dir=str(tmp_path / 'out'))
    writer.process({}, [_mask_sample('2007_000032'), _mask_sample('sub/x')])
    writer.evaluate(2)
    assert {'2007_000032.png', 'sub/x.png'} <= set(_files(real))
    os.symlink(tmp_path, real / 'up')
    writer = PseudoLabelWriter(out_dir=str(tmp_path / 'out'))
    with pytest.raises(UnsafePathError, match="'up/escape'"):
        writer.process({}, [_mask_sample('up/escape')])
    assert not (tmp_path / 'escape.png').exists()


def test_generate_pseudo_labels_refuses_a_list_that_leaves_out(tmp_path, tiny_tool_options,
                                                               tool_runner, pl_list_config):
    """The hostile-user case: a split list and tags file with ``../../victim/escape``."""
    data = tmp_path / 'data'
    (data / 'JPEGImages').mkdir(parents=True)
    (tmp_path / 'victim').mkdir()
    for path in (data / 'JPEGImages' / 'ok.jpg', tmp_path / 'victim' / 'escape.jpg'):
        Image.fromarray(np.full((32, 48, 3), 90, np.uint8)).save(path)
    bad = '../../victim/escape'
    (data / 'list.txt').write_text(f'ok\n{bad}\n')
    (data / 'tags.txt').write_text(f'ok 1\n{bad} 2\n')
    out = tmp_path / 'out'
    with pytest.raises(Exception) as info:
        tool_runner.inprocess(
            'tools/generate_pseudo_labels.py', pl_list_config, '--out', str(out), '--tags',
            str(data / 'tags.txt'), '--cfg-options', *tiny_tool_options['pl'],
            f'test_dataloader.dataset.data_root={data}',
            'test_dataloader.dataset.ann_file=list.txt')
    assert bad in str(info.value)
    assert not (tmp_path / 'victim' / 'escape.png').exists()
    assert [f for f in _files(tmp_path) if f.endswith('escape.png')] == []

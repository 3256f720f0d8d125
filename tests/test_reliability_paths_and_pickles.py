"""Ids stay inside the output folder; refused pickles are called refused
(issue "Reliability, round 3", items 9 and 10).

* Every writer turns an id into a path with ``safe_join``: an id that is
  absolute, climbs out with ``..`` or leaves through a symbolic link inside
  the folder is refused with the id and the folder named; an output folder
  that is itself a symbolic link keeps working.
* A weights file that asks to call a function while unpickled is refused
  and described as such (decided from the file's opcodes, not from torch's
  wording); a JPEG is "not a checkpoint"; a truncated file is "truncated".
  torch's advice to retry with ``weights_only=False`` is never repeated.
"""
import os
import os.path as osp
import pickle

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


# ------------------------------------------------------------- 9: safe_join
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


# -------------------------------------------------------- 10: refused pickles
class CallsSystem:
    """Unpickling this calls ``os.system('touch <marker>')``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


def bad_files(tmp_path, tiny_clip):
    """``kind -> (path, words the message must hold)`` and the marker of code run."""
    marker = tmp_path / 'code_ran'
    state = dict(tiny_clip.state_dict())
    evil = tmp_path / 'system.pth'
    torch.save(dict(state_dict=state, extra=CallsSystem(marker)), evil)
    raw = tmp_path / 'system.pkl'
    raw.write_bytes(pickle.dumps(CallsSystem(marker), protocol=4))
    jpeg = tmp_path / 'photo.pth'
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(jpeg, format='JPEG')
    good = tmp_path / 'good.pth'
    torch.save(state, good)
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(good.read_bytes()[:osp.getsize(good) // 2])
    system = f'{os.system.__module__}.system'  # posix.system
    calls = ('asks to call', system, 'could run code', 'Nothing from it was executed')
    return dict(system=(str(evil), calls), raw_pickle=(str(raw), calls),
                jpeg=(str(jpeg), ('a JPEG image, not a checkpoint', )),
                truncated=(str(truncated), ('truncated', ))), marker


def assert_explained(message, path, words):
    for fragment in (path, *words):
        assert fragment in message, (fragment, message)
    assert 'weights_only=False' not in message and '`weights_only` set to `False`' not in message
    if 'asks to call' not in words:
        assert 'asks to call' not in message and 'Python objects' not in message


def test_clip_loader_says_why_a_file_did_not_load(tmp_path, tiny_clip):
    from tagclip_mmseg.models.clip import CheckpointError, load_clip
    files, marker = bad_files(tmp_path, tiny_clip)
    for kind, (path, words) in files.items():
        with pytest.raises(CheckpointError) as info:
            load_clip(path)
        assert_explained(str(info.value), path, words)
    assert not marker.exists()


def test_mmengine_loader_says_why_a_file_did_not_load(tmp_path, tiny_clip):
    from tagclip_mmseg.engine import (UnreadableCheckpointError, UnsafeCheckpointError,
                                      load_from_local_weights_only)
    files, marker = bad_files(tmp_path, tiny_clip)
    for kind, (path, words) in files.items():
        expected = UnsafeCheckpointError if 'asks to call' in words else UnreadableCheckpointError
        with pytest.raises(expected) as info:
            load_from_local_weights_only(path)
        assert_explained(str(info.value), path, words)
    assert not marker.exists()


def test_refusal_is_read_from_the_file_not_from_the_wording(tmp_path, tiny_clip):
    """Any torch wording (2.1's "Unsupported global", 2.9's "whose module posix
    is blocked", or one not written yet) gives the same explanation."""
    from tagclip_mmseg.utils import refused_globals, unreadable_reason
    files, _ = bad_files(tmp_path, tiny_clip)
    reworded = pickle.UnpicklingError('a wording no torch version has used')
    assert refused_globals(files['system'][0], reworded) == [f'{os.system.__module__}.system']
    assert refused_globals(files['jpeg'][0], reworded) is None
    assert refused_globals(files['system'][0], RuntimeError('not a pickle error')) is None
    assert 'JPEG' in unreadable_reason(files['jpeg'][0], reworded)

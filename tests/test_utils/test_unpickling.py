"""Checkpoints that do not load are explained, and never run code.

A weights file that asks to call a function while unpickled is refused and
described as such (decided from the file's opcodes, not from torch's
wording); a JPEG is "not a checkpoint"; a truncated file is "truncated".
torch's advice to retry with ``weights_only=False`` is never repeated. The
cases run through the CLIP loader, mmengine's loader, the inferencer, the
demo and the tools.
"""
import importlib.util
import os
import os.path as osp
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from tagclip_mmseg.testing.checkout import repo_root
from tagclip_mmseg.testing.images import FOLDER_CONFIG, scores_file_option, write_folder_images


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
    """Any torch wording of a refusal gives the same explanation.

    2.1's "Unsupported global", 2.9's "whose module posix is blocked", or one not written yet.
    """
    from tagclip_mmseg.utils import refused_globals, unreadable_reason
    files, _ = bad_files(tmp_path, tiny_clip)
    reworded = pickle.UnpicklingError('a wording no torch version has used')
    assert refused_globals(files['system'][0], reworded) == [f'{os.system.__module__}.system']
    assert refused_globals(files['jpeg'][0], reworded) is None
    assert refused_globals(files['system'][0], RuntimeError('not a pickle error')) is None
    assert 'JPEG' in unreadable_reason(files['jpeg'][0], reworded)


REPO = repo_root(__file__)


def load_demo():
    spec = importlib.util.spec_from_file_location('image_demo',
                                                  osp.join(REPO, 'demo', 'image_demo.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class OpenMarker:
    """Unpickling this calls ``open(marker, 'w')``: code run from a file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


#: Bad CLIP checkpoints: what each must be called (besides its path).
BAD_CLIPS = {
    'calls_open': ('asks to call', 'open', 'could run code', 'Nothing from it was executed'),
    'calls_system': ('asks to call', f'{os.system.__module__}.system', 'could run code',
                     'Nothing from it was executed'),
    'jpeg': ('a JPEG image, not a checkpoint', ),
    'truncated': ('truncated', ),
}


@pytest.fixture(params=sorted(BAD_CLIPS))
def bad_clip(request, tmp_path, tiny_clip):
    """``(path, marker, expected fragments)``.

    A CLIP state dict plus a pickled call that creates ``marker``, a JPEG, or a truncated
    checkpoint.
    """
    marker = tmp_path / 'code_ran'
    path = tmp_path / f'{request.param}.pth'
    state = tiny_clip.state_dict()
    if request.param == 'calls_open':
        torch.save({'state_dict': state, 'extra': OpenMarker(str(marker))}, path)
    elif request.param == 'calls_system':
        torch.save({'state_dict': state, 'extra': CallsSystem(str(marker))}, path)
    elif request.param == 'jpeg':
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, format='JPEG')
    else:
        torch.save(state, path)
        path.write_bytes(path.read_bytes()[:osp.getsize(path) // 2])
    return str(path), marker, BAD_CLIPS[request.param]


def assert_says_why(message: str, path: str, fragments) -> None:
    """The file and why it did not load; never torch's advice."""
    for fragment in (path, *fragments):
        assert fragment in message, (fragment, message)
    assert 'weights_only=False' not in message and '`weights_only` set to `False`' not in message
    if 'asks to call' not in fragments:
        assert 'asks to call' not in message and 'could run code' not in message


@pytest.mark.classic
def test_bad_clip_checkpoint_is_explained_and_never_runs(bad_clip, tmp_path, tiny_tool_options,
                                                         tool_runner, capsys):
    """The inferencer, the demo and ``tools/test.py --clip-checkpoint``.

    A file that calls a function, a JPEG and a truncated file.
    """
    from tagclip_mmseg.apis import TagCLIPInferencer
    from tagclip_mmseg.models.clip import CheckpointError
    path, marker, fragments = bad_clip

    with pytest.raises(CheckpointError) as info:
        TagCLIPInferencer(checkpoint=path, device='cpu', classes=['cat', 'dog'])
    assert_says_why(str(info.value), path, fragments)
    assert not marker.exists()

    images = tmp_path / 'photos'
    write_folder_images(images)
    demo = load_demo()
    assert demo.main([str(images), '--out-dir', str(tmp_path / 'demo'), '--checkpoint', path,
                      '--classes', 'cat', 'dog', '--device', 'cpu']) == 2
    err = capsys.readouterr().err
    assert_says_why(err, path, fragments)
    assert 'Traceback' not in err and not marker.exists()

    with pytest.raises(CheckpointError) as info:
        tool_runner.inprocess(
            'tools/test.py', FOLDER_CONFIG, '--clip-checkpoint', path, '--work-dir',
            str(tmp_path / 'work'), '--cfg-options', *tiny_tool_options['tag'],
            f'test_dataloader.dataset.data_root={images}',
            f'test_evaluator.0.out_file={tmp_path / "tags.txt"}',
            *scores_file_option(tmp_path / 'tags.txt'))
    assert_says_why(str(info.value), path, fragments)
    assert not marker.exists() and not (tmp_path / 'tags.txt').exists()


@pytest.mark.classic
def test_checkpoint_messages_name_the_cause(tmp_path, tiny_clip):
    from tagclip_mmseg.models.clip import CheckpointError, load_clip

    # A wrong-shaped tensor: its name and both shapes, as a CheckpointError.
    state = dict(tiny_clip.state_dict())
    key = 'visual.transformer.resblocks.1.mlp.c_fc.weight'
    expected = tuple(state[key].shape)
    state[key] = torch.zeros(expected[0] - 3, expected[1])
    wrong = tmp_path / 'wrong_shape.pth'
    torch.save(state, wrong)
    with pytest.raises(CheckpointError) as info:
        load_clip(str(wrong))
    assert key in str(info.value)
    assert str((expected[0] - 3, expected[1])) in str(info.value)
    assert str(expected) in str(info.value)

    # Random bytes: unreadable, nothing about calls, and not torch's advice.
    noise = tmp_path / 'noise.pth'
    noise.write_bytes(np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError) as info:
        load_clip(str(noise))
    message = str(info.value)
    assert 'truncated, corrupt or not a PyTorch/safetensors checkpoint' in message
    assert 'asks to call' not in message and 'weights_only' not in message

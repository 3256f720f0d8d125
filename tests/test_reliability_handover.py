"""Reliability, round 2: no code from weights files, clean hand-over between
stages, clear errors early, one live run per output.

Each test reproduces one case of the hostile-user pass (issue "Reliability,
round 2", items 6-13) through the public entry point a user meets: the tools
(in this interpreter, for speed, or in a subprocess where the process itself
is the subject), the inferencer and the demo. The training entry points of
item 6 are in ``test_tools_train.py`` (they need its tiny segmenter config).
"""
import argparse
import importlib.util
import json
import os
import os.path as osp
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TAG_CONFIG = 'configs/tagclip/tagclip_vit-b16_folder.py'
IDS = ('apple', 'boat', 'cloud', 'dune')


def write_images(folder, ids=IDS, seed=0):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, img_id in enumerate(ids):
        pixels = rng.integers(0, 256, (40 + 8 * (i % 3), 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(osp.join(folder, f'{img_id}.jpg'))


def scores_option(tags_file) -> list:
    """Keep the folder config's scores file next to the tags (not in the repository)."""
    return [f'test_evaluator.0.scores_file={tags_file}.scores.jsonl']


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


class CallsSystem:
    """Unpickling this calls ``os.system('touch <marker>')``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


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
    """``(path, marker, expected fragments)``: a CLIP state dict plus a pickled
    call that creates ``marker``, a JPEG, or a truncated checkpoint."""
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


# ------------------------------------------------------- 6: code from a file
@pytest.mark.classic
def test_bad_clip_checkpoint_is_explained_and_never_runs(bad_clip, tmp_path, tiny_tool_options,
                                                         tool_runner, capsys):
    """The inferencer, the demo and ``tools/test.py --clip-checkpoint``; a file
    that calls a function, a JPEG and a truncated file."""
    from tagclip_mmseg.apis import TagCLIPInferencer
    from tagclip_mmseg.models.clip import CheckpointError
    path, marker, fragments = bad_clip

    with pytest.raises(CheckpointError) as info:
        TagCLIPInferencer(checkpoint=path, device='cpu', classes=['cat', 'dog'])
    assert_says_why(str(info.value), path, fragments)
    assert not marker.exists()

    images = tmp_path / 'photos'
    write_images(images)
    demo = load_demo()
    assert demo.main([str(images), '--out-dir', str(tmp_path / 'demo'), '--checkpoint', path,
                      '--classes', 'cat', 'dog', '--device', 'cpu']) == 2
    err = capsys.readouterr().err
    assert_says_why(err, path, fragments)
    assert 'Traceback' not in err and not marker.exists()

    with pytest.raises(CheckpointError) as info:
        tool_runner.inprocess(
            'tools/test.py', TAG_CONFIG, '--clip-checkpoint', path, '--work-dir',
            str(tmp_path / 'work'), '--cfg-options', *tiny_tool_options['tag'],
            f'test_dataloader.dataset.data_root={images}',
            f'test_evaluator.0.out_file={tmp_path / "tags.txt"}',
            *scores_option(tmp_path / 'tags.txt'))
    assert_says_why(str(info.value), path, fragments)
    assert not marker.exists() and not (tmp_path / 'tags.txt').exists()


# ------------------------------------------------------ 11: checkpoint messages
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


def test_demo_reports_a_wrong_shaped_checkpoint_without_traceback(tmp_path, tiny_clip, capsys):
    state = dict(tiny_clip.state_dict())
    key = 'visual.ln_post.weight'
    state[key] = torch.ones(state[key].shape[0] + 5)
    path = tmp_path / 'wrong.pth'
    torch.save(state, path)
    write_images(tmp_path / 'photos')
    assert load_demo().main([str(tmp_path / 'photos'), '--out-dir', str(tmp_path / 'out'),
                             '--checkpoint', str(path), '--classes', 'cat', '--device',
                             'cpu']) == 2
    captured = capsys.readouterr()
    assert key in captured.err and 'Traceback' not in captured.err
    assert 'model ready' not in captured.out


# ---------------------------------------------------- 10: vocabulary, early
def test_vocabulary_errors_are_raised_when_the_model_is_built(tiny_clip):
    from tagclip_mmseg.models import CLIPESPseudoLabeler, TagCLIP
    for model in (TagCLIP, CLIPESPseudoLabeler):
        kwargs = dict(caa_layers=[0, 1]) if model is CLIPESPseudoLabeler else dict(
            avg_layers=[0, 1], vote_k=2)
        with pytest.raises(ValueError, match=r"class_names: duplicate.*'Dog'.*'dog '"):
            model(clip=tiny_clip, class_names=['Dog', 'cat', 'dog '], **kwargs)
        with pytest.raises(ValueError, match=r"class_names: class 0 \(None\)"):
            model(clip=tiny_clip, class_names=[None, 'dog'], **kwargs)
        long_name = 'enormous ' * 80
        with pytest.raises(ValueError, match="77-token context.*truncate_prompts=True"):
            model(clip=tiny_clip, class_names=['cat', long_name], **kwargs)
        with pytest.warns(UserWarning, match='truncating'):
            built = model(clip=tiny_clip, class_names=['cat', long_name], truncate_prompts=True,
                          **kwargs)
        assert built.truncate_prompts is True


def test_inferencer_names_bad_arguments(deep_tiny_clip_path, tmp_path):
    from tagclip_mmseg.apis import TagCLIPInferencer
    with pytest.raises(ValueError, match=r'^classes: class 0 \(None\)'):
        TagCLIPInferencer(checkpoint=deep_tiny_clip_path, device='cpu', classes=[None, 'dog'])
    with pytest.raises(ValueError, match=r"^classes: duplicate.*'Cat'.*'cat'"):
        TagCLIPInferencer(checkpoint=deep_tiny_clip_path, device='cpu', classes=['Cat', 'cat'])
    long_name = 'enormous ' * 80
    with pytest.raises(ValueError, match='truncate_prompts'):
        TagCLIPInferencer(checkpoint=deep_tiny_clip_path, device='cpu',
                          classes=['cat', long_name], background_words=[])
    with pytest.warns(UserWarning, match='truncating'):
        inferencer = TagCLIPInferencer(
            checkpoint=deep_tiny_clip_path, device='cpu', classes=['cat', long_name],
            background_words=[], truncate_prompts=True, text_cache_dir=str(tmp_path))
    with pytest.raises(TypeError, match='inputs must be'):
        inferencer(None)
    with pytest.raises(TypeError, match=r'inputs\[1\]'):
        inferencer([np.zeros((32, 32, 3), np.uint8), None])
    with pytest.raises(ValueError, match=r'^classes: class 1 \(None\)'):
        inferencer([np.zeros((32, 32, 3), np.uint8)], classes=['cat', None])


def test_demo_prints_vocabulary_errors_before_model_ready(tmp_path, deep_tiny_clip_path,
                                                         capsys):
    write_images(tmp_path / 'photos')
    assert load_demo().main([str(tmp_path / 'photos'), '--out-dir', str(tmp_path / 'out'),
                             '--checkpoint', deep_tiny_clip_path, '--classes', 'Cat', 'cat',
                             '--device', 'cpu']) == 2
    captured = capsys.readouterr()
    assert "duplicate class names would get identical embeddings: 'Cat'" in captured.err
    assert 'Traceback' not in captured.err and 'model ready' not in captured.out


# ------------------------------------------------------------ 9: empty folder
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


# ----------------------------------------------------------- 12: --data-root
def test_data_root_flag_takes_spaces_and_unicode(tmp_path, tiny_tool_options, tool_runner):
    root = tmp_path / 'my photos, été' / 'sous-dossier ü'
    write_images(root)
    out = tmp_path / 'tags.txt'
    tool_runner.inprocess(
        'tools/test.py', TAG_CONFIG, '--data-root', str(root), '--work-dir',
        str(tmp_path / 'work'), '--cfg-options', *tiny_tool_options['tag'],
        f'test_evaluator.0.out_file={out}', *scores_option(out))
    assert [line.split()[0] for line in out.read_text().splitlines()] == sorted(IDS)
    with pytest.raises(FileNotFoundError, match='--data-root'):
        tool_runner.inprocess('tools/test.py', TAG_CONFIG, '--data-root',
                              str(tmp_path / 'no such folder'))


def test_set_data_root_reaches_every_dataset(tmp_path):
    from mmengine.config import Config

    from tagclip_mmseg.utils import load_config
    config = osp.join(REPO, 'configs', 'deeplab',
                      'deeplabv2_r101-d8-msc_1xb5-accum2-20k_voc12aug-pseudo-321x321.py')
    root = tmp_path / 'my photos' / 'VOC, 2012 ü'
    root.mkdir(parents=True)
    args = argparse.Namespace(config=config, launcher='none', cfg_options=None,
                              data_root=str(root))
    cfg = load_config(args)
    assert cfg.data_root == str(root)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader].dataset.data_root == str(root), loader
        assert Config.fromfile(config)[loader].dataset.data_root != str(root)


# ------------------------------------------- 7: stage 2 reads stage 1's skips
def test_pseudo_labels_skip_what_the_tagger_skipped(tmp_path, tiny_tool_options, tool_runner,
                                                    pl_list_config):
    data = tmp_path / 'data'
    write_images(data / 'JPEGImages')
    (data / 'JPEGImages' / 'broken.jpg').write_bytes(b'<html>not a jpeg</html>')
    tags = tmp_path / 'tags' / 'tags.txt'
    tool_runner.inprocess(
        'tools/test.py', TAG_CONFIG, '--data-root', str(data / 'JPEGImages'), '--work-dir',
        str(tmp_path / 'work'), '--cfg-options', *tiny_tool_options['tag'],
        f'test_evaluator.0.out_file={tags}', *scores_option(tags))
    skipped = (tmp_path / 'tags' / 'tags.skipped.txt').read_text()
    assert skipped.startswith('broken\t')
    out = tmp_path / 'pseudo'
    tool_runner.inprocess(
        'tools/generate_pseudo_labels.py', pl_list_config, '--data-root', str(data), '--out',
        str(out), '--tags', str(tags), '--cfg-options', *tiny_tool_options['pl'])
    assert sorted(p.stem for p in out.glob('*.png')) == sorted(IDS)
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


# ----------------------------------- 8: the documented custom-dataset recipe
def doc_config(section: str) -> str:
    """The first python block after ``section`` in docs/add_dataset.md."""
    with open(osp.join(REPO, 'docs', 'add_dataset.md'), encoding='utf-8') as f:
        text = f.read()
    after = text[text.index(section):]
    return re.search(r'```python\n(.*?)```', after, re.S).group(1)


def test_documented_custom_dataset_recipe_runs_as_written(tmp_path, tiny_tool_options,
                                                          tool_runner):
    # The config exactly as documented, in a configs/<folder>/ next to the
    # repository's configs (linked), so that its relative _base_ resolves.
    configs = tmp_path / 'configs'
    configs.mkdir()
    for name in os.listdir(osp.join(REPO, 'configs')):
        os.symlink(osp.join(REPO, 'configs', name), configs / name)
    (configs / 'custom').mkdir()
    config = configs / 'custom' / 'my_photos.py'
    config.write_text(doc_config('## Pseudo masks for your images'))
    photos = tmp_path / 'my photos'
    write_images(photos)
    tags = tmp_path / 'tags.txt'
    tags.write_text('apple 0\nboat 1 2\ncloud\ndune 2\n')
    out = tmp_path / 'pseudo'
    tool_runner.inprocess(
        'tools/generate_pseudo_labels.py', str(config), '--data-root', str(photos), '--tags',
        str(tags), '--out', str(out), '--cfg-options', *tiny_tool_options['pl'])
    assert sorted(p.stem for p in out.glob('*.png')) == sorted(IDS)
    for img_id in IDS:
        with Image.open(photos / f'{img_id}.jpg') as img, Image.open(out / f'{img_id}.png') as m:
            assert m.size == img.size
    assert json.loads((out / 'summary.json').read_text())['failed'] == 0


# ------------------------------------------------ 13: one live run per output
@pytest.fixture
def live_process():
    proc = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def write_lock(path, pid, host=None):
    path.write_text(json.dumps(dict(pid=pid, host=host or socket.gethostname(),
                                    started='2026-01-01 00:00:00')) + '\n')


def test_run_lock_refuses_live_owner_and_takes_over_stale(tmp_path, live_process):
    from mmengine.logging import MMLogger

    from tagclip_mmseg.utils.run_lock import OutputInUseError, RunLock
    output = tmp_path / 'tags.txt'
    lock_file = tmp_path / 'tags.txt.lock'
    write_lock(lock_file, live_process.pid)
    with pytest.raises(OutputInUseError, match=f'pid {live_process.pid} on '):
        RunLock(str(output)).acquire()
    write_lock(lock_file, live_process.pid, host='another-host.example')
    with pytest.raises(OutputInUseError, match=f'another host.*delete {re.escape(str(lock_file))}'):
        RunLock(str(output)).acquire()
    assert json.loads(lock_file.read_text())['host'] == 'another-host.example'

    write_lock(lock_file, live_process.pid)
    live_process.kill()
    live_process.wait()
    logger = MMLogger.get_instance('run_lock_test', log_file=str(tmp_path / 'log.txt'))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MMLogger, 'get_current_instance', classmethod(lambda cls: logger))
        lock = RunLock(str(output))
        lock.acquire()
    assert f'stale lock of pid {live_process.pid}' in (tmp_path / 'log.txt').read_text()
    assert json.loads(lock_file.read_text())['pid'] == os.getpid()
    lock.release()
    assert not lock_file.exists()


def test_restarted_run_refuses_while_another_holds_the_output(tmp_path, tiny_tool_options,
                                                              tool_runner, live_process):
    from tagclip_mmseg.utils.run_lock import OutputInUseError
    write_images(tmp_path / 'photos')
    out = tmp_path / 'tags.txt'
    lock_file = tmp_path / 'tags.txt.lock'
    write_lock(lock_file, live_process.pid)
    run = ('tools/test.py', TAG_CONFIG, '--data-root', str(tmp_path / 'photos'), '--work-dir',
           str(tmp_path / 'work'), '--cfg-options', *tiny_tool_options['tag'],
           f'test_evaluator.0.out_file={out}', *scores_option(out))
    with pytest.raises(OutputInUseError, match=f'in use by another run \\(pid {live_process.pid}'):
        tool_runner.inprocess(*run)
    assert not out.exists()
    assert not list(tmp_path.glob('tags.txt.journal*'))
    live_process.kill()
    live_process.wait()
    tool_runner.inprocess(*run)  # the owner is gone: the stale lock is taken over
    assert len(out.read_text().splitlines()) == len(IDS)
    assert not lock_file.exists()


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='parent-death signal is Linux')
def test_killing_dist_test_sh_stops_its_ranks(tmp_path, tiny_tool_options, tool_runner):
    """SIGKILL to the launcher script: the rank (its pid is in the output lock) stops."""
    ids = [f'img{i:03d}' for i in range(600)]
    write_images(tmp_path / 'photos', ids)
    out = tmp_path / 'tags.txt'
    lock_file = tmp_path / 'tags.txt.lock'
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    env = dict(tool_runner.env(), PYTHON=sys.executable, PORT=str(port))
    launcher = subprocess.Popen(
        ['bash', osp.join(REPO, 'tools', 'dist_test.sh'), TAG_CONFIG, 'none', '1', '--data-root',
         str(tmp_path / 'photos'), '--work-dir', str(tmp_path / 'work'), '--cfg-options',
         *tiny_tool_options['tag'], f'test_evaluator.0.out_file={out}', *scores_option(out)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rank_pid = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and launcher.poll() is None and rank_pid is None:
            journals = list(tmp_path.glob('tags.txt.journal*'))
            if lock_file.exists() and journals:
                try:
                    rank_pid = json.loads(lock_file.read_text())['pid']
                except ValueError:
                    pass  # being written
            time.sleep(0.01)
        assert rank_pid is not None, 'the rank never started tagging'
        assert not out.exists(), 'the run ended before the kill; give it more images'
        launcher.send_signal(signal.SIGKILL)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.wait()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _alive(rank_pid):
        time.sleep(0.05)
    if _alive(rank_pid):
        os.kill(rank_pid, signal.SIGKILL)
        pytest.fail('the rank kept running after its launcher was killed')
    assert not out.exists()


def _alive(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/stat', encoding='utf-8') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


#: Runs in its own interpreter: becomes a child subreaper, starts
#: ``tools/dist_test.sh`` with 2 ranks, SIGKILLs the launcher as soon as both
#: ranks exist (they are still importing, before any rank guard), then waits
#: (bounded) for the adopted ranks and prints a JSON report.
SUBREAPER_SCRIPT = r'''
import ctypes, json, os, signal, subprocess, sys, time

PR_SET_CHILD_SUBREAPER = 36
cmd, env, stderr_path, wait_s = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0, ctypes.get_errno()


def children_of(pid):
    out = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    fields = f.read().rsplit(')', 1)[1].split()
                with open(f'/proc/{entry}/cmdline', 'rb') as f:
                    args = f.read().split(b'\0')
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != 'Z':
                out.append((int(entry), args))
    return out


with open(stderr_path, 'wb') as err:
    launcher = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
ranks = []
deadline = time.monotonic() + wait_s
while time.monotonic() < deadline and launcher.poll() is None and len(ranks) < 2:
    ranks = [pid for pid, args in children_of(launcher.pid)
             if any(a.endswith(b'tools/test.py') for a in args)]
    time.sleep(0.005)
launcher.send_signal(signal.SIGKILL)
launcher.wait()
statuses, survivors = {}, []
deadline = time.monotonic() + wait_s
while time.monotonic() < deadline and len(statuses) < len(ranks):
    for pid in ranks:
        if pid not in statuses:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not adopted yet
                continue
            if done:
                statuses[pid] = os.waitstatus_to_exitcode(status)
    time.sleep(0.05)
for pid in ranks:
    if pid not in statuses:
        survivors.append(pid)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
for pid, _ in children_of(os.getpid()):  # anything else torchrun left to us
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
print(json.dumps(dict(ranks=ranks, survivors=survivors, statuses=list(statuses.values()))))
'''


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='subreapers are Linux')
def test_ranks_stop_when_the_launcher_dies_early_under_a_subreaper(tmp_path, tool_runner):
    """Launcher SIGKILLed before the ranks arm their guard, under a child
    subreaper: the ranks are adopted by the subreaper (not by init), notice
    that their parent is not the launcher recorded at start, and stop."""
    script = tmp_path / 'subreaper.py'
    script.write_text(SUBREAPER_SCRIPT)
    stderr = tmp_path / 'launcher.stderr'
    env = dict(tool_runner.env(), PYTHON=sys.executable)
    env.pop('PORT', None)  # one node, no PORT: torchrun --standalone picks a free port
    cmd = ['bash', osp.join(REPO, 'tools', 'dist_test.sh'), TAG_CONFIG, 'none', '2',
           '--work-dir', str(tmp_path / 'work')]
    wait_s = 300
    proc = subprocess.run([sys.executable, str(script), json.dumps([cmd, env, str(stderr),
                                                                   wait_s])],
                          cwd=REPO, capture_output=True, text=True, timeout=3 * wait_s)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    log = stderr.read_text(errors='replace')
    assert len(report['ranks']) == 2, log[-3000:]
    assert report['survivors'] == [], f'ranks outlived their launcher:\n{log[-3000:]}'
    assert log.count('is gone; stopping') == 2, log[-3000:]


def test_writer_run_hook_refuses_a_live_owner_and_undoes_its_other_locks(tmp_path, live_process):
    """A second run stops in before_test, before any writer touches its output."""
    from types import SimpleNamespace

    from tagclip_mmseg.engine import WriterRunHook
    from tagclip_mmseg.evaluation import PseudoLabelWriter, TagFileWriter
    from tagclip_mmseg.utils.run_lock import OutputInUseError
    (tmp_path / 'masks').mkdir()
    write_lock(tmp_path / 'masks' / '.lock', live_process.pid)
    runner = SimpleNamespace(test_evaluator=SimpleNamespace(metrics=[
        TagFileWriter(out_file=str(tmp_path / 'tags.txt')),
        PseudoLabelWriter(out_dir=str(tmp_path / 'masks'))]))
    with pytest.raises(OutputInUseError, match=f'pid {live_process.pid}'):
        WriterRunHook().before_test(runner)
    assert not (tmp_path / 'tags.txt.lock').exists()
    assert json.loads((tmp_path / 'masks' / '.lock').read_text())['pid'] == live_process.pid

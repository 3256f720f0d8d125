"""Killed runs and determinism of the command-line tools.

A pseudo-label run is SIGKILLed at a random point; while it runs, every
visible PNG must be complete (atomic writes), and the restarted run must skip
the finished images and end with a folder byte-identical to an uninterrupted
run's. Tagging runs write their files once at the end but journal every
image as they go: a killed one leaves the previous complete files (or none)
untouched, and the restarted run resumes from the journal, recomputing only
the images it lacks, to the same files. Outputs must not depend on the run or
on the number of processes.

The random kill point is printed on failure (``seed=...``) so that a failing
case can be replayed with ``RELIABILITY_KILL_SEED``.
"""
import glob
import json
import os
import random
import signal
import subprocess

import numpy as np
import pytest
from PIL import Image

NUM_IMAGES = 30
PL_SCRIPT = 'tools/generate_pseudo_labels.py'
TAG_CONFIG = 'configs/tagclip/tagclip_vit-b16_folder.py'
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
PNG_TRAILER = b'\x00\x00\x00\x00IEND\xaeB`\x82'


@pytest.fixture(scope='module')
def images(tmp_path_factory, image_split):
    """``NUM_IMAGES`` small photos of mixed sizes, a split list and a tags file."""
    rng = np.random.default_rng(0)
    tags = {}

    def write(index, img_id, path):
        h, w = rng.integers(24, 97, size=2)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=90)
        tags[img_id] = sorted(set(rng.integers(0, 20, size=rng.integers(0, 4)).tolist()))

    return image_split(tmp_path_factory.mktemp('resume'),
                       [f'img{i:03d}' for i in range(NUM_IMAGES)], write, tags.get)


def pl_args(images, out, tiny_tool_options, config, *extra):
    return [
        config, '--out', str(out), '--tags', str(images / 'tags.txt'), '--cfg-options',
        *tiny_tool_options['pl'], f'test_dataloader.dataset.data_root={images}',
        'test_dataloader.dataset.ann_file=list.txt', *extra
    ]


def visible_files(folder) -> dict:
    """Every non-hidden file of ``folder`` (not recursive) -> its bytes."""
    return {
        name: (folder / name).read_bytes()
        for name in sorted(os.listdir(folder))
        if not name.startswith('.') and (folder / name).is_file()
    }


def assert_pngs_complete(folder) -> int:
    """Every visible ``*.png`` is a whole PNG that decodes; returns how many there are.

    A PNG is replaced atomically, never rewritten in place, so reading one
    that is listed always yields a complete file, whatever the writer is
    doing at that moment.
    """
    names = [n for n in os.listdir(folder) if n.endswith('.png') and not n.startswith('.')]
    for name in names:
        data = (folder / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and data.endswith(PNG_TRAILER), name
        with Image.open(folder / name) as img:
            img.load()
    return len(names)


def pngs(folder) -> dict:
    return {k: v for k, v in visible_files(folder).items() if k.endswith('.png')}


# ------------------------------------------------------------ pseudo labels
@pytest.fixture(scope='module')
def reference(images, tmp_path_factory, tiny_tool_options, tool_runner, pl_list_config):
    """An uninterrupted pseudo-label run of the images (in this process).

    It runs with ``--no-resume`` over a folder of outdated (but complete)
    masks, which must all be recomputed and replaced.
    """
    out = tmp_path_factory.mktemp('reference')
    outdated = Image.new('P', (3, 2))
    for i in range(NUM_IMAGES):
        outdated.save(out / f'img{i:03d}.png')
    tool_runner.inprocess(PL_SCRIPT, '--no-resume',
                          *pl_args(images, out, tiny_tool_options, pl_list_config))
    summary = json.loads((out / 'summary.json').read_text())
    assert (summary['written'], summary['skipped'], summary['failed']) == (NUM_IMAGES, 0, 0)
    for name in pngs(out):
        with Image.open(out / name) as mask:
            assert mask.size != (3, 2), name
    return out


@pytest.mark.determinism
def test_killed_pseudo_label_run_resumes_to_the_same_folder(images, reference, tmp_path,
                                                            tiny_tool_options, tool_runner,
                                                            pl_list_config, masks_agree):
    seed = tool_runner.kill_seed()
    kill_after = random.Random(seed).randint(2, NUM_IMAGES - 8)
    context = f'seed={seed}, kill after {kill_after} PNGs'
    out = tmp_path / 'out'
    log = (tmp_path / 'killed.log').open('w')
    # One image per batch: PNGs appear one by one, so the kill lands mid-run.
    # (The reference ran with the config's batches of 4: a mask must not
    # depend on which images share its batch.)
    proc = tool_runner.popen(
        PL_SCRIPT, *pl_args(images, out, tiny_tool_options, pl_list_config,
                            'test_dataloader.batch_size=1'),
        stdout=log, stderr=subprocess.STDOUT)
    polls = 0

    def enough_pngs() -> bool:
        nonlocal polls
        if not out.is_dir():
            return False
        polls += 1
        return assert_pngs_complete(out) >= kill_after

    try:
        tool_runner.kill_when(proc, enough_pngs)
    finally:
        log.close()
    assert proc.returncode == -signal.SIGKILL, (
        f'{context}: the run ended by itself (rc={proc.returncode}) before the kill; '
        + (tmp_path / 'killed.log').read_text()[-2000:])
    done = assert_pngs_complete(out)
    assert kill_after <= done < NUM_IMAGES, context
    assert not (out / 'summary.json').exists(), context
    finished = pngs(out)
    masks_agree(finished, {name: (reference / name).read_bytes() for name in finished})

    # The restart (here, in this process) comes after the temporaries of the
    # killed run are "stale": with the default 60 s, a restart within a minute
    # leaves them for the next one.
    tool_runner.inprocess(
        PL_SCRIPT, *pl_args(images, out, tiny_tool_options, pl_list_config,
                            'test_evaluator.0.stale_temp_age_s=0'))
    summary = json.loads((out / 'summary.json').read_text())
    assert (summary['skipped'], summary['written'], summary['failed']) == (
        done, NUM_IMAGES - done, 0), context
    # The same folder (summary.json holds timings and counts): the same files,
    # the kept masks byte for byte, and the masks under the determinism
    # contract (the reference ran batches of 4 in the test's threads).
    expected = {k: v for k, v in visible_files(reference).items() if k != 'summary.json'}
    actual = {k: v for k, v in visible_files(out).items() if k != 'summary.json'}
    assert sorted(actual) == sorted(expected), context
    assert all(actual[name] == data for name, data in finished.items()), context
    masks_agree({k: v for k, v in actual.items() if k.endswith('.png')},
                {k: v for k, v in expected.items() if k.endswith('.png')})
    assert {k: v for k, v in actual.items() if not k.endswith('.png')} == {
        k: v for k, v in expected.items() if not k.endswith('.png')}, context
    assert not [n for n in os.listdir(out) if n.endswith('.tmp')], context
    assert polls > 1


def test_pseudo_label_rerun_after_completion_recomputes_nothing(images, reference, tmp_path,
                                                                tiny_tool_options, tool_runner,
                                                                pl_list_config):
    out = tmp_path / 'out'
    out.mkdir()
    # The masks and the record of their settings (settings.json).
    for name, data in visible_files(reference).items():
        (out / name).write_bytes(data)
    tool_runner.inprocess(PL_SCRIPT, *pl_args(images, out, tiny_tool_options, pl_list_config))
    summary = json.loads((out / 'summary.json').read_text())
    assert (summary['skipped'], summary['written']) == (NUM_IMAGES, 0)
    assert pngs(out) == pngs(reference)


# ------------------------------------------------------------------ tagging
def tag_args(images, out, tiny_tool_options, *extra):
    return [
        TAG_CONFIG, '--work-dir', str(out / 'work_dir'), '--cfg-options', *tiny_tool_options['tag'],
        f'test_dataloader.dataset.data_root={images / "JPEGImages"}',
        f'test_evaluator.0.out_file={out / "tags.txt"}',
        f'test_evaluator.0.scores_file={out / "scores.jsonl"}', *extra
    ]


TAG_FILES = ('tags.txt', 'scores.jsonl', 'tags.skipped.txt')


@pytest.fixture(scope='module')
def tag_reference(images, tmp_path_factory, tiny_tool_options, tool_runner):
    out = tmp_path_factory.mktemp('tag_reference')
    tool_runner.inprocess('tools/test.py', *tag_args(images, out, tiny_tool_options))
    return {name: (out / name).read_bytes() for name in TAG_FILES}


@pytest.fixture(scope='module')
def tag_ratio():
    """The tag threshold ratio of the tagging config the runs use."""
    from mmengine.config import Config
    return Config.fromfile(TAG_CONFIG).model.tag_ratio


def journaled_ids(out) -> list:
    """Image ids in the tagging journals of ``out/tags.txt`` (complete lines only)."""
    ids = []
    for path in glob.glob(str(out / 'tags.txt.journal.rank*.jsonl')):
        lines = open(path, 'rb').read().split(b'\n')[1:]  # after the header
        ids += [json.loads(line)['img_id'] for line in lines if line.endswith(b'}')]
    return ids


@pytest.mark.determinism
@pytest.mark.slow
def test_killed_tagging_run_resumes_to_the_same_files(images, tag_reference, tmp_path,
                                                      tiny_tool_options, tool_runner,
                                                      tag_files_agree, tag_ratio):
    """A kill leaves the last complete files; the restart resumes from the journal.

    The folder holds the files of an earlier run of another vocabulary; the
    new run is killed after a random number of journaled images and must
    leave them untouched (not truncated, not half-replaced); the restart
    reuses exactly the journaled images and writes the reference files (up to
    the rounding the determinism contract allows: the killed run has batches
    of 1 in one thread, the reference batches of 8 in the test's threads).
    """
    for name in TAG_FILES:
        (tmp_path / name).write_bytes(b'old complete file\n')
    seed = tool_runner.kill_seed()
    kill_after = random.Random(seed).randint(1, NUM_IMAGES - 8)
    context = f'seed={seed}, kill after {kill_after} journaled images'
    proc = tool_runner.popen(
        'tools/test.py', *tag_args(images, tmp_path, tiny_tool_options,
                                   'test_dataloader.batch_size=1'),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def enough_journaled() -> bool:
        if len(journaled_ids(tmp_path)) >= kill_after:
            return True
        for name in TAG_FILES:
            assert (tmp_path / name).read_bytes() == b'old complete file\n', context
        return False

    tool_runner.kill_when(proc, enough_journaled)
    assert proc.returncode == -signal.SIGKILL, f'{context}: rc={proc.returncode}'
    for name in TAG_FILES:
        assert (tmp_path / name).read_bytes() == b'old complete file\n', context
    done = journaled_ids(tmp_path)
    assert kill_after <= len(done) < NUM_IMAGES, context
    tool_runner.inprocess('tools/test.py', *tag_args(images, tmp_path, tiny_tool_options))
    tag_files_agree({name: (tmp_path / name).read_bytes() for name in TAG_FILES}, tag_reference,
                    tag_ratio)
    logs = ''.join(open(p).read() for p in glob.glob(str(tmp_path / 'work_dir' / '*' / '*.log')))
    assert f'{NUM_IMAGES - len(done)} tagged, {len(done)} resumed, 0 skipped' in logs, context
    assert not glob.glob(str(tmp_path / '*.journal.*'))
    assert not [n for n in os.listdir(tmp_path) if n.endswith('.tmp')]


@pytest.mark.determinism
@pytest.mark.slow
def test_tags_of_two_processes_equal_one(images, tag_reference, tmp_path, tiny_tool_options,
                                         tool_runner, tag_files_agree, tag_ratio):
    """The tags files of a 2-process run (torchrun, gloo on CPU) equal one
    process's under the determinism contract."""
    tool_runner.subprocess('tools/test.py', *tag_args(images, tmp_path, tiny_tool_options),
                           nproc=2)
    tag_files_agree({name: (tmp_path / name).read_bytes() for name in TAG_FILES}, tag_reference,
                    tag_ratio)
    assert not glob.glob(str(tmp_path / '*.journal.*'))  # both ranks' journals removed

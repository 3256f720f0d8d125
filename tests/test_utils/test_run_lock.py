"""One live run per output folder: a live owner is refused, a stale one taken over."""
import json
import os
import re
import socket
import subprocess
import sys

import pytest

from tagclip_mmseg.testing.images import (FOLDER_CONFIG, FOLDER_IDS, scores_file_option,
                                          write_folder_images)


@pytest.fixture
def live_process(tool_runner):
    proc = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],
                            env=tool_runner.env())
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
    write_folder_images(tmp_path / 'photos')
    out = tmp_path / 'tags.txt'
    lock_file = tmp_path / 'tags.txt.lock'
    write_lock(lock_file, live_process.pid)
    run = ('tools/test.py', FOLDER_CONFIG, '--data-root', str(tmp_path / 'photos'), '--work-dir',
           str(tmp_path / 'work'), '--cfg-options', *tiny_tool_options['tag'],
           f'test_evaluator.0.out_file={out}', *scores_file_option(out))
    with pytest.raises(OutputInUseError, match=f'in use by another run \\(pid {live_process.pid}'):
        tool_runner.inprocess(*run)
    assert not out.exists()
    assert not list(tmp_path.glob('tags.txt.journal*'))
    live_process.kill()
    live_process.wait()
    tool_runner.inprocess(*run)  # the owner is gone: the stale lock is taken over
    assert len(out.read_text().splitlines()) == len(FOLDER_IDS)
    assert not lock_file.exists()


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

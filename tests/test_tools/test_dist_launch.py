"""``tools/dist_test.sh``: killing the launcher stops its ranks.

The rank's pid is in the output lock; a rank that outlives its launcher would
hold the output folder and keep computing.
"""
import json
import os
import os.path as osp
import signal
import socket
import subprocess
import sys
import time

import pytest

from tagclip_mmseg.testing.checkout import repo_root
from tagclip_mmseg.testing.images import FOLDER_CONFIG, scores_file_option, write_folder_images

REPO = repo_root(__file__)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='parent-death signal is Linux')
def test_killing_dist_test_sh_stops_its_ranks(tmp_path, tiny_tool_options, tool_runner):
    """SIGKILL to the launcher script: the rank (its pid is in the output lock) stops."""
    ids = [f'img{i:03d}' for i in range(600)]
    write_folder_images(tmp_path / 'photos', ids)
    out = tmp_path / 'tags.txt'
    lock_file = tmp_path / 'tags.txt.lock'
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    env = tool_runner.env(PYTHON=sys.executable, PORT=str(port))
    launcher = subprocess.Popen(
        ['bash', osp.join(REPO, 'tools', 'dist_test.sh'), FOLDER_CONFIG, 'none', '1', '--data-root',
         str(tmp_path / 'photos'), '--work-dir', str(tmp_path / 'work'), '--cfg-options',
         *tiny_tool_options['tag'], f'test_evaluator.0.out_file={out}', *scores_file_option(out)],
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
SUBREAPER_SCRIPT = r"""
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
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='subreapers are Linux')
def test_ranks_stop_when_the_launcher_dies_early_under_a_subreaper(tmp_path, tool_runner):
    """Launcher SIGKILLed before the ranks arm their guard, under a child subreaper.

    The ranks are adopted by the subreaper (not by init), notice that their parent is not the
    launcher recorded at start, and stop.
    """
    script = tmp_path / 'subreaper.py'
    script.write_text(SUBREAPER_SCRIPT)
    stderr = tmp_path / 'launcher.stderr'
    env = tool_runner.env(PYTHON=sys.executable)
    env.pop('PORT', None)  # one node, no PORT: torchrun --standalone picks a free port
    cmd = ['bash', osp.join(REPO, 'tools', 'dist_test.sh'), FOLDER_CONFIG, 'none', '2',
           '--work-dir', str(tmp_path / 'work')]
    wait_s = 300
    proc = subprocess.run([sys.executable, str(script), json.dumps([cmd, env, str(stderr),
                                                                   wait_s])],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=3 * wait_s)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    log = stderr.read_text(errors='replace')
    assert len(report['ranks']) == 2, log[-3000:]
    assert report['survivors'] == [], f'ranks outlived their launcher:\n{log[-3000:]}'
    assert log.count('is gone; stopping') == 2, log[-3000:]

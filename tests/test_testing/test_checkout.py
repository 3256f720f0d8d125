"""A fresh interpreter started by a test runs the checkout under test.

The suite may run from a second worktree while an editable install points at
another copy: tools started through ``tool_env`` (and ``tool_runner``) must
import ``tagclip_mmseg`` from the test's own repository root.
"""
import os.path as osp
import subprocess
import sys

import pytest

from tagclip_mmseg.testing.checkout import repo_root, tool_env

REPO = repo_root(__file__)
WHERE = 'import tagclip_mmseg; print(tagclip_mmseg.__file__)'


def imported_from(env, cwd) -> str:
    proc = subprocess.run([sys.executable, '-c', WHERE], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_repo_root_is_the_folder_with_setup_and_the_package(tmp_path):
    assert osp.isfile(osp.join(REPO, 'setup.py'))
    assert osp.samefile(REPO, osp.join(osp.dirname(__file__), '..', '..'))
    assert repo_root(osp.join(REPO, 'tests', 'data')) == REPO
    with pytest.raises(FileNotFoundError, match='setup.py and tagclip_mmseg'):
        repo_root(str(tmp_path))


@pytest.mark.parametrize('other', [None, 'elsewhere'])
def test_tool_env_imports_the_package_of_this_checkout(tmp_path, monkeypatch, other):
    """Whatever PYTHONPATH the caller had, this checkout comes first.

    The run starts outside the repository, so only the environment can point at it.
    """
    if other is None:
        monkeypatch.delenv('PYTHONPATH', raising=False)
    else:
        monkeypatch.setenv('PYTHONPATH', str(tmp_path / other))
    monkeypatch.setenv('LOCAL_RANK', '3')
    env = tool_env(REPO, OMP_NUM_THREADS='2')
    assert env['PYTHONPATH'].split(osp.pathsep)[0] == REPO
    assert (env['CUDA_VISIBLE_DEVICES'], env['OMP_NUM_THREADS']) == ('', '2')
    assert 'LOCAL_RANK' not in env
    assert imported_from(env, tmp_path) == osp.join(REPO, 'tagclip_mmseg', '__init__.py')


def test_tool_runner_runs_this_checkout(tool_runner, tmp_path, monkeypatch):
    monkeypatch.delenv('PYTHONPATH', raising=False)
    assert imported_from(tool_runner.env(), tmp_path) == osp.join(REPO, 'tagclip_mmseg',
                                                                  '__init__.py')

"""The checkout a test belongs to, and the environment of a fresh interpreter.

A test that starts a tool (``tools/*.py``, the demo, ``python -c``) in a new
process must run the code of its own repository, not whatever an editable
install points at: a second worktree then tests its own code.
"""
import os
import os.path as osp
from typing import Dict, Optional

__all__ = ['repo_root', 'tool_env']


def repo_root(path: str) -> str:
    """The nearest folder above ``path`` with ``setup.py`` and the ``tagclip_mmseg`` package.

    Args:
        path (str): A file or folder inside the checkout (a test's ``__file__``).

    Returns:
        str: The absolute path of the repository root.
    """
    here = osp.dirname(osp.abspath(path)) if osp.isfile(path) else osp.abspath(path)
    while True:
        if osp.isfile(osp.join(here, 'setup.py')) and osp.isdir(osp.join(here, 'tagclip_mmseg')):
            return here
        parent = osp.dirname(here)
        if parent == here:
            raise FileNotFoundError(f'{path} is not inside a tagclip_mmseg checkout: no folder '
                                    'above it holds setup.py and tagclip_mmseg/')
        here = parent


def tool_env(root: str, base: Optional[Dict[str, str]] = None, **overrides: str) -> Dict[str, str]:
    """The environment of a tool started in a fresh interpreter by a test.

    ``root`` goes first on ``PYTHONPATH``, so ``import tagclip_mmseg`` finds
    that checkout. The run is CPU only, one thread per process, unbuffered,
    and not a rank of the caller's distributed job (no ``LOCAL_RANK``).

    Args:
        root (str): Repository root of the code under test (:func:`repo_root`).
        base (dict, optional): Environment to start from. Defaults to
            ``os.environ``.
        **overrides: Variables set last (they win over the defaults above).

    Returns:
        dict: The environment, for ``subprocess.run(..., env=...)``.
    """
    env = dict(os.environ if base is None else base)
    paths = [root] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p]
    env.update(PYTHONPATH=os.pathsep.join(paths), CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS='1',
               PYTHONUNBUFFERED='1')
    env.pop('LOCAL_RANK', None)
    env.update(overrides)
    return env

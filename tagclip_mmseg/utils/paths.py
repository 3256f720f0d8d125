"""Turn an image id into a path that stays inside its output folder.

Ids come from files a user (or an attacker) writes; every writer goes through
:func:`safe_join`.
"""
import os
import os.path as osp
from typing import Union

__all__ = ['UnsafePathError', 'safe_join']


class UnsafePathError(ValueError):
    """An id that would put a file outside its output folder."""


def safe_join(root: Union[str, os.PathLike], rel: str, suffix: str = '') -> str:
    """``root/rel + suffix``, refused unless it stays inside ``root``.

    ``rel`` may name subfolders but not climb out, also not through a
    symbolic link.

    Args:
        root (str | os.PathLike): The output folder.
        rel (str): The id (a relative path without extension).
        suffix (str): Appended to ``rel`` (e.g. ``'.png'``).

    Returns:
        str: The absolute target path, under the resolved ``root``.

    Raises:
        UnsafePathError: Naming the id and the folder, when the target would
            be outside ``root`` (or ``rel`` is empty).
    """
    root = osp.realpath(osp.expanduser(os.fspath(root)))
    name = f'{rel}{suffix}'
    problem = None
    if not isinstance(rel, str) or not rel.strip() or '\0' in rel:
        problem = 'it is empty or not a string'
    elif osp.isabs(rel) or rel.startswith(('/', '\\', '~')):
        problem = 'it is an absolute path'
    elif '..' in rel.replace('\\', '/').split('/'):
        problem = "it climbs out with '..'"
    else:
        target = osp.join(root, name)
        if osp.commonpath([root, osp.realpath(target)]) != root:
            problem = 'it leads outside through a symbolic link'
        else:
            return target
    raise UnsafePathError(f'refusing image id {rel!r}: {problem}, so its file would not be '
                          f'inside the output folder {root!r}. Ids must be relative paths '
                          'inside the folder; fix the split list, tags file or file name.')

"""Content hashes of files, computed once per version of a file.

Hashes are kept in memory and, for files of 64 MiB or more, in
``$TAGCLIP_MMSEG_CACHE/file_sha256``, keyed by :func:`file_identity`; any
write changes a file's status-change time, so an edited file is hashed again.
"""
import hashlib
import os
import os.path as osp
from typing import Dict, List, Optional, Tuple

from .io import atomic_write_text

__all__ = [
    'CACHE_ENV', 'cache_root', 'file_sha256', 'file_identity', 'file_stamp', 'remember_sha256'
]

#: Environment variable naming the root of tagclip_mmseg's caches.
CACHE_ENV = 'TAGCLIP_MMSEG_CACHE'
_CHUNK = 1 << 20
#: Files from this size on get an on-disk record of their hash.
_DISK_MIN_BYTES = 64 << 20
_MEMORY: Dict[Tuple, str] = {}


def cache_root() -> str:
    """``$TAGCLIP_MMSEG_CACHE``, else ``~/.cache/tagclip_mmseg``."""
    return osp.expanduser(os.environ.get(CACHE_ENV) or osp.join('~', '.cache', 'tagclip_mmseg'))


def file_identity(path: str) -> Tuple[str, int, int, int, int, int]:
    """``(realpath, size, inode, device, mtime_ns, ctime_ns)`` of ``path``.

    Equal identities mean equal bytes.
    """
    real = osp.realpath(path)
    st = os.stat(real)
    return real, st.st_size, st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns


def file_stamp(path: Optional[str]) -> Optional[List[int]]:
    """``[size, mtime_ns]`` of a file (links followed), or ``None`` if it cannot be read."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return [st.st_size, st.st_mtime_ns]


def _cache_file(identity: Tuple) -> str:
    name = hashlib.sha256(repr(identity).encode('utf-8')).hexdigest()
    return osp.join(cache_root(), 'file_sha256', name[:2], name + '.txt')


def _read_cached(identity: Tuple) -> Optional[str]:
    try:
        with open(_cache_file(identity), encoding='utf-8') as f:
            digest = f.read().strip()
    except OSError:
        return None
    return digest if len(digest) == 64 and all(c in '0123456789abcdef' for c in digest) else None


def file_sha256(path: str, use_cache: bool = True) -> str:
    """The hex SHA-256 of a file's whole content, read once per version.

    Args:
        path (str): The file (``~`` is expanded; links are followed).
        use_cache (bool): Reuse and record the hash under the file's
            :func:`file_identity` (on disk from 64 MiB on); ``False`` always
            reads the file.

    Returns:
        str: 64 lowercase hex digits.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        IsADirectoryError: If ``path`` is a folder.
    """
    path = osp.expanduser(os.fspath(path))
    identity = file_identity(path)
    if use_cache:
        digest = _MEMORY.get(identity)
        if digest is None and identity[1] >= _DISK_MIN_BYTES:
            digest = _read_cached(identity)
        if digest is not None:
            _MEMORY[identity] = digest
            return digest
    sha = hashlib.sha256()
    with open(identity[0], 'rb') as f:
        for block in iter(lambda: f.read(_CHUNK), b''):
            sha.update(block)
    digest = sha.hexdigest()
    if use_cache and file_identity(path) == identity:  # unchanged while it was read
        _remember(identity, digest)
    return digest


def remember_sha256(path: str, digest: str) -> None:
    """Record the known hash of a file just written, so :func:`file_sha256` skips reading it."""
    _remember(file_identity(osp.expanduser(os.fspath(path))), digest)


def _remember(identity: Tuple, digest: str) -> None:
    _MEMORY[identity] = digest
    if identity[1] < _DISK_MIN_BYTES:
        return
    try:
        atomic_write_text(_cache_file(identity), digest + '\n')
    except OSError:  # a read-only cache only costs a re-hash next start
        pass

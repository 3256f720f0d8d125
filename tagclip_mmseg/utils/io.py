"""Crash-safe file writing.

Data lands in a fsynced temporary file, then ``os.replace``s the final name:
a reader sees the old file, no file or the new one, never a truncated one.
"""
import contextlib
import os
import os.path as osp
import tempfile
from typing import IO, Iterator, Union

__all__ = ['atomic_open', 'atomic_write_bytes', 'atomic_write_text', 'ensure_writable_dir']

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_writable_dir(path: PathLike) -> str:
    """Create ``path`` if needed and check that files can be written in it.

    Raises:
        PermissionError: With the path and a hint, when it is not writable.
    """
    path = osp.abspath(osp.expanduser(os.fspath(path)))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise PermissionError(f'cannot create output folder {path!r}: {e}. '
                              'Choose another --out / output folder.') from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f'output folder {path!r} is not writable. '
                              'Fix its permissions or choose another output folder.')
    return path


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = 'wb', **kwargs) -> Iterator[IO]:
    """Open a temporary file next to ``path``; rename it onto ``path`` on success.

    If the body raises, the temporary file is removed and ``path`` is left as
    it was.
    """
    if not any(m in mode for m in 'wx'):
        raise ValueError(f'atomic_open is for writing, got mode {mode!r}')
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path) + '.', suffix='.tmp', dir=folder)
    try:
        # mkstemp creates 0600 files; give the result the permissions an
        # ordinary open() would (0666 minus the umask) so other users of a
        # shared cluster folder can read the outputs.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode.replace('x', 'w'), **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, 'wb') as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, 'w', encoding='utf-8') as f:
        f.write(text)

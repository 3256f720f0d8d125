"""Say why a weights file could not be loaded, from the file, not from torch's wording.

The pickle is read opcode by opcode (:mod:`pickletools`, which runs nothing)
and its globals compared with torch's weights-only allowlist.
"""
import io
import pickle
import pickletools
import zipfile
from typing import List, Optional, Set

from torch import serialization

__all__ = ['error_sentence', 'pickle_globals', 'refused_globals', 'unreadable_reason']

#: Leading bytes of files people mistake for checkpoints.
_MAGIC = ((b'\xff\xd8\xff', 'a JPEG image'), (b'\x89PNG\r\n\x1a\n', 'a PNG image'),
          (b'GIF8', 'a GIF image'), (b'%PDF', 'a PDF document'), (b'BM', 'a BMP image'),
          (b'RIFF', 'a RIFF (WebP/WAV/AVI) file'), (b'\x1f\x8b', 'a gzip archive'),
          (b'<', 'an HTML/XML text (a login or error page saved instead of the file?)'))
_STRING_OPS = frozenset({'STRING', 'BINSTRING', 'SHORT_BINSTRING', 'UNICODE', 'BINUNICODE',
                         'SHORT_BINUNICODE', 'BINUNICODE8'})
#: Prefixes taken as allowed when torch does not expose its list.
_TORCH_OWN = ('torch.', 'collections.')
#: Consecutive pickles of torch's legacy (non-zip) format before the raw storages.
_MAX_PICKLES = 5


def error_sentence(e: BaseException) -> str:
    """The first line of ``e``'s message that is not loading advice (its type if none)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    lines = [line for line in lines if 'weights_only' not in line]
    return lines[0] if lines else type(e).__name__


def _scan(stream: io.BytesIO) -> List[str]:
    """Globals of the one pickle starting at ``stream``'s position.

    Raises:
        ValueError: If the bytes are not a complete pickle.
    """
    found, recent, memo, last = [], [], {}, None
    try:
        for op, arg, _ in pickletools.genops(stream):
            name = op.name
            value = None
            if name in _STRING_OPS:
                value = arg.decode('latin-1') if isinstance(arg, bytes) else arg
            elif name in ('GLOBAL', 'INST'):
                found.append(str(arg).replace(' ', '.', 1))
            elif name == 'STACK_GLOBAL':
                found.append('.'.join(recent[-2:]) if len(recent) >= 2 else '<unknown>')
            elif name in ('BINPUT', 'LONG_BINPUT', 'PUT'):
                memo[arg] = last
            elif name == 'MEMOIZE':
                memo[len(memo)] = last
            elif name in ('GET', 'BINGET', 'LONG_BINGET'):
                value = memo.get(arg)
            if name not in ('BINPUT', 'LONG_BINPUT', 'PUT', 'MEMOIZE', 'FRAME'):
                last = value
                if value is not None:
                    recent = (recent + [value])[-2:]
    except Exception as e:  # noqa: BLE001  (genops raises ValueError, struct.error, ...)
        raise ValueError(str(e)) from e
    return found


def _main_pickles(path: str) -> List[bytes]:
    """The pickle bytes torch would read from ``path`` (zip member or whole file)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return [zf.read(n) for n in zf.namelist() if n.endswith('data.pkl')]
    with open(path, 'rb') as f:
        return [f.read()]


def pickle_globals(path: str) -> Optional[List[str]]:
    """Every ``module.name`` a pickle or ``torch.save`` file names, else ``None`` (not a pickle)."""
    try:
        blobs = _main_pickles(path)
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return None
    found = []
    for blob in blobs:
        stream = io.BytesIO(blob)
        for i in range(_MAX_PICKLES):  # legacy format: several pickles, then raw bytes
            try:
                found += _scan(stream)
            except ValueError:
                if i == 0:
                    return None
                break
            if stream.tell() >= len(blob):
                break
    return found


def _allowed_globals() -> Set[str]:
    """What torch's weights-only loader accepts in this process (feature-checked)."""
    allowed: Set[str] = set()
    try:
        from torch import _weights_only_unpickler as wou  # private; absent in some torch
        allowed.update(wou._get_allowed_globals())
    except (ImportError, AttributeError):
        allowed.update(_TORCH_OWN)
    for g in getattr(serialization, 'get_safe_globals', list)():
        obj, name = (g[0], g[1]) if isinstance(g, tuple) else (g, None)
        allowed.add(name or f'{getattr(obj, "__module__", "")}.{getattr(obj, "__qualname__", "")}')
    return allowed


def refused_globals(path: str, e: BaseException) -> Optional[List[str]]:
    """The globals that made the weights-only loader raise ``e``; ``None`` for other failures."""
    if not isinstance(e, pickle.UnpicklingError):
        return None
    names = pickle_globals(path)
    if names is None:
        return None
    allowed = _allowed_globals()
    refused = sorted({n for n in names
                      if n not in allowed and not n.startswith(tuple(a for a in allowed
                                                                     if a.endswith('.')))})
    return refused or None


def unreadable_reason(path: str, e: BaseException) -> str:
    """Why a file that was not refused could not be read, in a few words."""
    try:
        with open(path, 'rb') as f:
            head = f.read(16)
    except OSError:
        head = b''
    kind = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    if kind is not None:
        return f'it is {kind}, not a checkpoint'
    if not head:
        detail = 'the file is empty'
    elif isinstance(e, pickle.UnpicklingError) and pickle_globals(path) is None:
        detail = 'its bytes are not a complete pickle'
    else:
        detail = f'{type(e).__name__}: {error_sentence(e)}'
    return f'it is truncated, corrupt or not a PyTorch/safetensors checkpoint ({detail})'

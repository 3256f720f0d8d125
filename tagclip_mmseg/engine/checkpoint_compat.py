"""Load mmengine checkpoints without running code from the file.

Local and downloaded checkpoints load with ``weights_only=True`` plus an
allowlist of exactly the types an mmengine training checkpoint holds
(:data:`MMENGINE_CHECKPOINT_GLOBALS`), so ``--resume`` works under torch >= 2.6
(open-mmlab/mmengine#1655) without unsafe loading. Nothing happens at import:
the tools enter :func:`safe_checkpoint_loading`. See docs/compatibility.md,
"Traps" (the ``tools/train.py --resume`` row).
"""
import contextlib
import inspect
import logging
import os
import os.path as osp
import pickle
from typing import Any, Callable, Iterator, List, Optional, Union
from urllib.parse import urlparse

import numpy as np
import torch
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner import CheckpointLoader

from ..utils.torch_compat import has_named_safe_globals, load_weights_only
from ..utils.unpickling import refused_globals, unreadable_reason

__all__ = [
    'MMENGINE_CHECKPOINT_GLOBALS', 'UnsafeCheckpointError', 'UnreadableCheckpointError',
    'load_from_local_weights_only',
    'load_url_weights_only', 'safe_checkpoint_loading'
]

MapLocation = Optional[Union[str, torch.device, Callable]]


def _numpy_globals() -> List[Any]:
    """Numpy's pickling helpers and dtypes, under numpy 1 and numpy 2 names."""
    try:  # numpy >= 2 moved the core module to numpy._core
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core import multiarray
    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64,
                                           np.int32, np.uint8, np.bool_)]
    return [multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


def _history_buffer_getattr(owner: Any, name: str) -> Any:
    """``getattr`` limited to ``HistoryBuffer``'s public methods, as its pickles call it."""
    # Not the statistics registry: it may still be empty while loading.
    if owner is HistoryBuffer and not name.startswith('_') and \
            inspect.isfunction(vars(HistoryBuffer).get(name)):
        return getattr(owner, name)
    raise pickle.UnpicklingError(
        f'Unsupported global: getattr({owner!r}, {name!r}) is not a history buffer method.')


#: Non-container types of mmengine 0.10.7 training checkpoints (history
#: buffers, a restricted ``getattr``, numpy values).
MMENGINE_CHECKPOINT_GLOBALS: List[Any] = [
    HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr'), *_numpy_globals()
]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds Python objects that loading would have to execute."""


class UnreadableCheckpointError(RuntimeError):
    """A checkpoint file is damaged, or not a checkpoint at all."""


def _raise_load_error(path: str, what: str, e: BaseException) -> None:
    """Raise why ``path`` (``what``) did not load, read from the file, not from ``e``'s wording."""
    refused = refused_globals(path, e)
    if refused is not None:
        raise UnsafeCheckpointError(
            f'refusing to load {what}: besides weights, it asks to call {", ".join(refused)} '
            'while it is loaded, which could run code from the file, so loading was refused. '
            'Nothing from it was executed. Checkpoints written by mmengine/mmseg training load '
            'as they are; re-save a file you trust as a plain state dict '
            '(torch.save(model.state_dict(), path)).') from None
    raise UnreadableCheckpointError(f'cannot load {what}: {unreadable_reason(path, e)}') from None


def load_from_local_weights_only(filename: str, map_location: MapLocation = None) -> Any:
    """Mmengine's local-file loader with an explicit ``weights_only=True``.

    Args:
        filename: The checkpoint file.
        map_location: As ``torch.load``'s.

    Raises:
        FileNotFoundError: If ``filename`` is not a file.
        UnsafeCheckpointError: If the file stores objects beyond
            :data:`MMENGINE_CHECKPOINT_GLOBALS`; nothing from it was run.
        UnreadableCheckpointError: If the file is damaged or not a checkpoint.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename!r} can not be found; check the path '
                                '(--resume looks for the last_checkpoint of --work-dir).')
    try:
        return load_weights_only(filename, map_location, MMENGINE_CHECKPOINT_GLOBALS)
    except Exception as e:  # noqa: BLE001  (torch raises several types for bad files)
        _raise_load_error(filename, f'checkpoint {filename!r}', e)


def load_url_weights_only(url: str,
                          model_dir: Optional[str] = None,
                          map_location: MapLocation = None,
                          progress: bool = True,
                          check_hash: bool = False,
                          file_name: Optional[str] = None) -> Any:
    """Mmengine's ``load_url`` (download once, cache, load) with ``weights_only=True``.

    Args:
        url: The checkpoint's address.
        model_dir: Cache folder; default torch hub's ``checkpoints``.
        map_location: As ``torch.load``'s.
        progress: Show a download progress bar.
        check_hash: Check the hash prefix in the file name.
        file_name: Name of the cached file; default the URL's.

    Raises:
        UnsafeCheckpointError: If the file stores objects other than weights.
        UnreadableCheckpointError: If the file is damaged or not a checkpoint.
    """
    import torch.hub
    try:
        return torch.hub.load_state_dict_from_url(url, model_dir=model_dir,
                                                  map_location=map_location, progress=progress,
                                                  check_hash=check_hash, file_name=file_name,
                                                  weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises several types for bad files)
        if model_dir is None:
            model_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
        cached = osp.join(model_dir, file_name or osp.basename(urlparse(url).path))
        if not osp.isfile(cached):  # the download itself failed: torch's own error
            raise
        _raise_load_error(cached, f'the checkpoint downloaded from {url!r} ({cached})', e)


@contextlib.contextmanager
def safe_checkpoint_loading() -> Iterator[None]:
    """Within the block mmengine loads every checkpoint with ``weights_only=True``."""
    previous = CheckpointLoader._get_checkpoint_loader('')
    if os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '0').lower() in ('1', 'y', 'yes',
                                                                           'true'):
        print_log('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set, but this run still loads '
                  'checkpoints with weights_only=True (mmengine training checkpoints need no '
                  'unsafe loading).', logger='current', level=logging.WARNING)
    from mmengine.runner import checkpoint as mmengine_checkpoint
    previous_url_loader = mmengine_checkpoint.load_url
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_weights_only, force=True)
    mmengine_checkpoint.load_url = load_url_weights_only
    try:
        # Also for mmengine's other loaders (ceph, pavi...), where torch can.
        with (torch.serialization.safe_globals(MMENGINE_CHECKPOINT_GLOBALS)
              if has_named_safe_globals() else contextlib.nullcontext()):
            yield
    finally:
        CheckpointLoader.register_scheme(prefixes='', loader=previous, force=True)
        mmengine_checkpoint.load_url = previous_url_loader

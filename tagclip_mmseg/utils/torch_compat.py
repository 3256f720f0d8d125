"""What differs between the torch releases the project supports.

Feature checks, never version comparisons, except :func:`check_torch_version`
(docs/compatibility.md, "The tested range").
"""
import _compat_pickle
import codecs
import functools
import io
import pickle
import types
import warnings
from typing import Any, Callable, Dict, Iterable, Optional, Tuple, Union

import torch

__all__ = [
    'TORCH_MIN', 'TORCH_NEWEST_TESTED', 'check_torch_version', 'check_mmcv_ops',
    'has_named_safe_globals', 'load_weights_only', 'is_autocast_enabled', 'autocast_supports'
]

#: The oldest and the newest torch minor releases the suite passes on.
TORCH_MIN: Tuple[int, int] = (2, 1)
TORCH_NEWEST_TESTED: Tuple[int, int] = (2, 13)

#: One ``torch.serialization.safe_globals`` entry: an object, or an object
#: with the dotted name a pickle refers to it by.
SafeGlobal = Union[Any, Tuple[Any, str]]
MapLocation = Optional[Union[str, torch.device, Callable, Dict[str, str]]]


def _minor(version: str) -> Tuple[int, int]:
    """``(major, minor)`` of a version string such as ``'2.1.2+cu121'``."""
    parts = version.split('+')[0].split('.')
    return int(parts[0]), int(''.join(c for c in parts[1] if c.isdigit()) or 0)


def _range_text() -> str:
    return '%d.%d to %d.%d' % (*TORCH_MIN, *TORCH_NEWEST_TESTED)


def check_torch_version(version: Optional[str] = None) -> None:
    """Refuse a torch older than the tested range; warn about a newer one.

    Args:
        version (str, optional): The version to check; ``torch.__version__``
            when omitted.

    Raises:
        ImportError: If ``version`` is older than :data:`TORCH_MIN`.
    """
    version = torch.__version__ if version is None else version
    found = _minor(version)
    if found < TORCH_MIN:
        raise ImportError(
            f'tagclip_mmseg needs torch >= {TORCH_MIN[0]}.{TORCH_MIN[1]} (tested range: torch '
            f'{_range_text()}), but torch {version} is installed. Install a torch in that range '
            'and an mmcv built for it (README, "Installation").')
    if found > TORCH_NEWEST_TESTED:
        warnings.warn(f'torch {version} is newer than the tested range (torch {_range_text()}); '
                      'tagclip_mmseg may work, but its tests have not run on this release.',
                      stacklevel=2)


def check_mmcv_ops(import_ops: Optional[Callable[[], Any]] = None) -> None:
    """Import mmcv's compiled ops, explaining the fix when they do not load.

    mmseg imports ``mmcv.ops`` while it is imported, and a prebuilt mmcv
    compiled against another torch fails there with an undefined symbol.

    Args:
        import_ops (callable, optional): Imports the ops; ``import mmcv.ops``
            when omitted.

    Raises:
        ImportError: If the ops do not load, naming mmcv's and torch's
            versions and how to get an mmcv that matches this torch.
    """
    def default() -> Any:
        import mmcv.ops  # the check itself: loading the compiled ops may fail
        return mmcv.ops

    try:
        (import_ops or default)()
    except (ImportError, OSError) as e:
        try:
            import mmcv  # only to name its version in the error
            mmcv_version = mmcv.__version__
        except ImportError:
            raise ImportError('tagclip_mmseg needs mmcv 2.1.0 with its compiled ops; install it '
                              '(README, "Installation")') from e
        raise ImportError(
            f'mmcv {mmcv_version} is installed, but its compiled ops do not load with torch '
            f"{torch.__version__} ({type(e).__name__}: {e}). mmcv's ops are compiled against "
            'one torch release (and mmcv-lite has none): install the prebuilt mmcv wheel made '
            'for this torch and CUDA (mim install mmcv==2.1.0), or rebuild mmcv against this '
            'torch: pip uninstall -y mmcv && MMCV_WITH_OPS=1 pip install --no-build-isolation '
            '--no-cache-dir mmcv==2.1.0 (README, "Installation").') from e


def _dotted_name(entry: SafeGlobal) -> Tuple[str, Any]:
    """``('module.qualname', object)`` of one allowlist entry."""
    if isinstance(entry, tuple):
        obj, name = entry
        return name, obj
    return f'{entry.__module__}.{entry.__qualname__}', entry


def _probe_getattr(owner: Any, name: str) -> Any:  # pragma: no cover - never called
    raise AssertionError('only its identity is used')


@functools.lru_cache(maxsize=None)
def has_named_safe_globals() -> bool:
    """Whether ``safe_globals`` accepts ``(object, 'dotted.name')`` entries (torch >= 2.6)."""
    if not hasattr(torch.serialization, 'safe_globals'):
        return False
    buf = io.BytesIO()
    torch.save({'f': getattr}, buf)
    buf.seek(0)
    try:
        with torch.serialization.safe_globals([(_probe_getattr, 'builtins.getattr')]):
            loaded = torch.load(buf, weights_only=True)
    except Exception:  # noqa: BLE001  (any refusal means: not supported)
        return False
    return loaded.get('f') is _probe_getattr


def _restricted_pickle_module(allowed: Dict[str, Any]) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` that resolves only the globals in ``allowed``."""

    class Unpickler(pickle.Unpickler):

        def find_class(self, module: str, name: str) -> Any:
            # Python 2 names of protocol 2 pickles (__builtin__.getattr...).
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            full = f'{module}.{name}'
            if full not in allowed:
                raise pickle.UnpicklingError(
                    'Weights only load failed. WeightsUnpickler error: Unsupported global: '
                    f'GLOBAL {full} was not an allowed global by default.')
            return allowed[full]

    module = types.ModuleType('tagclip_mmseg_restricted_pickle')
    module.Unpickler = Unpickler  # type: ignore[attr-defined]
    module.load = lambda file, **kwargs: Unpickler(file, **kwargs).load()  # type: ignore
    return module


def _load_restricted(f: Any, map_location: MapLocation,
                     safe_globals: Iterable[SafeGlobal]) -> Any:
    """``torch.load`` allowing torch's ``weights_only`` list plus ``safe_globals``."""
    from torch import _weights_only_unpickler  # private module, read only on this path
    allowed = dict(_weights_only_unpickler._get_allowed_globals())
    # numpy arrays pickled with protocol 2 store their bytes through
    # _codecs.encode; torch >= 2.4 allows it by default too.
    allowed.setdefault('_codecs.encode', codecs.encode)
    allowed.update(_dotted_name(g) for g in safe_globals)
    with warnings.catch_warnings():
        # torch 2.4-2.5 warn about weights_only=False; the unpickler is restricted.
        warnings.filterwarnings('ignore', message='.*weights_only=False', category=FutureWarning)
        return torch.load(f, map_location=map_location, weights_only=False,
                          pickle_module=_restricted_pickle_module(allowed))


def load_weights_only(f: Any, map_location: MapLocation = None,
                      safe_globals: Iterable[SafeGlobal] = ()) -> Any:
    """``torch.load(weights_only=True)`` that also admits ``safe_globals``.

    No other global (and no code) is reached from the file on any supported
    torch.

    Args:
        f: A path or a binary file object.
        map_location: As for :func:`torch.load`.
        safe_globals (iterable): Objects, or ``(object, 'dotted.name')``
            pairs, the file may refer to besides torch's own allowlist.

    Returns:
        The unpickled object.

    Raises:
        pickle.UnpicklingError: If the file refers to any other global; the
            message contains ``Unsupported ...`` naming it.
    """
    safe_globals = list(safe_globals)
    if not safe_globals:
        return torch.load(f, map_location=map_location, weights_only=True)
    if has_named_safe_globals():
        with torch.serialization.safe_globals(safe_globals):
            return torch.load(f, map_location=map_location, weights_only=True)
    return _load_restricted(f, map_location, safe_globals)


def is_autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (on any torch version)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # older torch: one function per device type
        if device_type == 'cpu':
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


@functools.lru_cache(maxsize=None)
def autocast_supports(device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``torch.autocast(device_type, dtype=dtype)`` really runs in ``dtype``."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            with torch.autocast(device_type=device_type, dtype=dtype):
                if not is_autocast_enabled(device_type):
                    return False
                get_dtype = getattr(torch, 'get_autocast_dtype', None)  # torch >= 2.4
                return get_dtype is None or get_dtype(device_type) == dtype
        except RuntimeError:
            return False

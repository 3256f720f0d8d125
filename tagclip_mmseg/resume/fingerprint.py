"""Fingerprints of what decides a run's outputs, for reusing them safely.

A journal or a pseudo-label folder is reused only by a run whose settings
fingerprint equal. The settings are derived, never listed: every constructor
argument of the model (data preprocessor, CRF and in-pass tagger included)
and of every transform of the test pipeline, with defaults filled in (objects
of this package record them, :class:`~tagclip_mmseg.utils.RecordsInitArgs`),
minus the one list :data:`NOT_RESULT_SETTINGS` of settings that cannot change
a result. Values are taken as built where the object keeps them under the
argument's name (the resolved vocabulary, quirks and templates, the CLIP
module), so a vocabulary set later by ``VocabularyHook`` and the weights'
content (``checkpoint_fingerprint``) count too.
"""
import dataclasses
import enum
import hashlib
import inspect
import json
from typing import Any, Dict, Iterable, List, Optional

import torch
from mmseg.registry import MODELS, TRANSFORMS
from torch import nn

from ..utils.init_args import init_args, init_parameters
from .skip import SkipExisting, SkipTagged

__all__ = [
    'NOT_RESULT_SETTINGS', 'settings_of', 'model_settings', 'pipeline_settings',
    'resume_fingerprint'
]

#: Constructor arguments (of any class) and whole transforms (by type name)
#: that cannot change a result, with why; everything else is fingerprinted.
NOT_RESULT_SETTINGS: Dict[str, str] = {
    'images_per_forward': 'how many images share a forward pass; bounds memory',
    'cwr_batch_size': 'how many CWR crops share a forward pass; bounds memory',
    'workers': 'CRF worker processes; the same CRF runs in each',
    'text_cache_dir': 'where text embeddings are cached, not what they are',
    'init_cfg': 'weight initialisation, unused by the training-free models',
    'weights_only': 'how safely weights are read, not which weights',
    'out_dir': 'where results go',
    'placeholder_size': 'the stand-in image of a resumed sample, never computed',
    'on_error': 'whether an unreadable image stops the run; computed results are the same',
    'keep_ori_img': 'keeps a copy of the image for display',
    'PackInputs': 'packs results; computes nothing',
    'PackSegInputs': 'packs results; computes nothing',
    'LoadAnnotations': 'loads ground truth, which no prediction sees',
    'LoadOptionalAnnotations': 'loads ground truth, which no prediction sees',
}
_REGISTRIES = (MODELS, TRANSFORMS)
#: Wrappers that run their ``transforms`` only for images to compute: a run
#: with them (resuming) and one without (``--overwrite``) compute alike.
_WRAPPERS = (SkipExisting, SkipTagged)


def _builder(type_: Any) -> Optional[Any]:
    if not isinstance(type_, str):
        return type_ if callable(type_) else None
    for registry in _REGISTRIES:
        try:
            found = registry.get(type_)
        except Exception:  # noqa: BLE001  (an unknown scope prefix raises)
            found = None
        if found is not None:
            return found
    return None


def _type_name(type_: Any) -> str:
    return type_.split('.')[-1] if isinstance(type_, str) else getattr(type_, '__name__',
                                                                      repr(type_))


def _module_identity(module: nn.Module) -> Dict[str, Any]:
    """A module's checkpoint content hash, or the hash of its weights if not loaded from a file."""
    weights = getattr(module, 'checkpoint_fingerprint', None)
    if weights is None:
        digest = hashlib.sha256()
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                          .numpy().tobytes())
        weights = digest.hexdigest()
    dtypes = sorted({str(p.dtype) for p in module.parameters()})
    return dict(type=type(module).__name__, weights=weights, dtype=dtypes)


def _config_settings(cfg: dict, seen: frozenset) -> Dict[str, Any]:
    """A config dict with ``type``: its builder's defaults filled in."""
    builder = _builder(cfg['type'])
    name = _type_name(cfg['type'])
    values = {}
    if builder is not None:
        values = {n: p.default for n, p in init_parameters(builder).items()
                  if p.default is not p.empty}
    values.update((k, v) for k, v in cfg.items() if k != 'type')
    return dict(type=name, **{k: _settings(v, seen) for k, v in sorted(values.items())
                              if k not in NOT_RESULT_SETTINGS})


def settings_of(value: Any) -> Any:
    """``value`` as JSON values, with every setting that can change a result.

    Objects that record their constructor arguments give all of them (each
    as the object keeps it, when it keeps it under that name); config dicts
    with a ``type`` get their builder's defaults; other modules are
    identified by their weights, other objects by their attributes.
    """
    return _settings(value, frozenset())


def _settings(value: Any, seen: frozenset) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if id(value) in seen:  # a cycle between objects of another package
        return f'<{type(value).__name__}>'
    seen = seen | {id(value)}
    recorded = init_args(value)
    if recorded is not None:
        name = type(value).__name__
        out = dict(type=name)
        for arg, given in sorted(recorded.items()):
            if arg in NOT_RESULT_SETTINGS:
                continue
            try:
                kept = getattr(value, arg)
            except Exception:  # noqa: BLE001  (no attribute, or a property that fails)
                kept = None
            use_given = kept is None or inspect.ismethod(kept) or inspect.isfunction(kept)
            out[arg] = _settings(given if use_given else kept, seen)
        return out
    if isinstance(value, dict):
        if 'type' in value:
            return _config_settings(value, seen)
        return {str(k): _settings(v, seen)
                for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_settings(v, seen) for v in value]
        return sorted(items, key=json.dumps) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, nn.Module):
        return _module_identity(value)
    if dataclasses.is_dataclass(value):
        return _settings(dataclasses.asdict(value), seen)
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.name
    if hasattr(value, '__dict__') and not callable(value) or hasattr(value, 'transform'):
        name = type(value).__name__  # a transform of another package
        return dict(type=name, **{k: _settings(v, seen) for k, v in sorted(vars(value).items())
                                  if not k.startswith('_') and k not in NOT_RESULT_SETTINGS})
    if callable(value):
        return getattr(value, '__qualname__', type(value).__name__)
    return repr(value)


def model_settings(model) -> Dict[str, Any]:
    """Every setting of a built model that can change its outputs (JSON values).

    Raises:
        RuntimeError: When the model has a vocabulary to set and none is set.
    """
    if getattr(model, 'class_names', ()) is None:
        raise RuntimeError(f'{type(model).__name__} has no vocabulary yet; call '
                           'set_vocabulary first')
    return settings_of(model)


def pipeline_settings(transforms: Iterable[Any]) -> List[Any]:
    """The settings of the transforms that prepare the pixels a model sees.

    A resume wrapper is replaced by the transforms it wraps; transforms
    listed in :data:`NOT_RESULT_SETTINGS` (packing, ground truth) are left out.
    """
    flat = []
    for t in transforms:
        flat.extend(t.transforms if isinstance(t, _WRAPPERS) else [t])
    names = [t.get('type') if isinstance(t, dict) else type(t).__name__ for t in flat]
    return [settings_of(t) for t, name in zip(flat, names)
            if _type_name(name) not in NOT_RESULT_SETTINGS]


def _digest(settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def resume_fingerprint(model, transforms: Iterable[Any] = ()) -> str:
    """A hex SHA-256 of :func:`model_settings` and :func:`pipeline_settings`.

    Equal fingerprints mean equal outputs for equal image files, so outputs
    written under one can be reused by a run under the other.
    """
    return _digest(dict(model=model_settings(model), pixels=pipeline_settings(transforms)))

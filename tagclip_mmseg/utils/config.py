"""Small edits of loaded configs shared by the command-line tools.

Each helper sets every occurrence, so a flag never misses one.
"""
import inspect
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

from mmengine.config import Config, ConfigDict
from mmengine.registry import Registry

from .class_names import class_key

__all__ = [
    'iter_dicts', 'set_clip_checkpoint', 'set_data_root', 'set_in_dicts_of_type',
    'set_open_vocab_protocol', 'type_accepts', 'set_config_vocabulary'
]


def iter_dicts(node: Any) -> Iterator[dict]:
    """Every dict nested anywhere in ``node`` (dicts and lists), depth first."""
    if isinstance(node, (dict, ConfigDict)):
        yield node
        for v in node.values():
            yield from iter_dicts(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from iter_dicts(v)


def set_clip_checkpoint(cfg: Config, path: str) -> int:
    """Point every ``clip=dict(checkpoint=...)`` of the model config at ``path``.

    Returns:
        int: How many places were updated (0 means the config has no CLIP).
    """
    n = 0
    for d in iter_dicts(cfg.get('model', {})):
        clip = d.get('clip')
        if isinstance(clip, (dict, ConfigDict)):
            clip['checkpoint'] = path
            n += 1
    return n


def set_data_root(cfg: Config, path: str) -> int:
    """Set ``data_root`` at the top level and in every dict that has one.

    ``data_root`` is copied into the dataset dicts when the file is read, so
    ``--cfg-options data_root=...`` alone would not move them.

    Returns:
        int: How many dataset-level dicts were updated.
    """
    top = cfg._cfg_dict if isinstance(cfg, Config) else cfg
    n = 0
    for d in iter_dicts(list(top.values())):
        if 'data_root' in d:
            d['data_root'] = path
            n += 1
    cfg['data_root'] = path
    return n


def set_in_dicts_of_type(cfg: Config, types: List[str], key: str, value: Any,
                         where: Callable[[dict], bool] = lambda d: True) -> int:
    """Set ``key=value`` in every dict of the config whose ``type`` is in ``types``.

    Returns:
        int: How many dicts were updated.
    """
    n = 0
    for d in iter_dicts(cfg._cfg_dict if isinstance(cfg, Config) else cfg):
        t = d.get('type')
        if isinstance(t, str) and t.split('.')[-1] in types and where(d):
            d[key] = value
            n += 1
    return n


def set_open_vocab_protocol(cfg: Config, protocol: str) -> Tuple[int, int, int]:
    """Give an open-vocabulary config the sizes ``protocol`` uses for its benchmark.

    Sets every test ``Resize``'s shorter side and the slide window and
    stride from the config's ``open_vocab_sizes`` table.

    Args:
        cfg: A loaded open-vocabulary config.
        protocol: A project of the table, e.g. ``'sclip'``.

    Returns:
        The ``(shorter side, window, stride)`` set.

    Raises:
        ValueError: For a config without the table, an unknown project, or a
            benchmark whose sizes the project's configs do not give.
    """
    table, benchmark = cfg.get('open_vocab_sizes'), cfg.get('open_vocab_benchmark')
    if table is None or benchmark is None:
        raise ValueError('open_vocab_protocol applies to the configs of configs/open_vocab '
                         '(they set open_vocab_sizes and open_vocab_benchmark)')
    if protocol not in table:
        raise ValueError(f'unknown open_vocab_protocol {protocol!r}; known: {sorted(table)}')
    sizes = table[protocol].get(benchmark)
    if sizes is None:
        raise ValueError(
            f'{protocol} gives no sizes for {benchmark} (its config was not found; '
            'docs/open_vocab.md "Sizes per project"): set the Resize scale and '
            'model.test_cfg.crop_size/stride with --cfg-options instead')
    short_side, window, stride = sizes
    for t in iter_dicts(cfg.test_dataloader):
        if t.get('type') == 'Resize':  # the long side stays (the protocol's 2048)
            t['scale'] = (t['scale'][0], short_side)
    cfg.model.test_cfg.update(crop_size=window, stride=stride)
    cfg.open_vocab_protocol = protocol
    return short_side, window, stride


def type_accepts(registry: Registry, type_name: Any, arg: str) -> bool:
    """Whether the registered class ``type_name`` takes ``arg`` in ``__init__``.

    Follows ``**kwargs`` up the class hierarchy; an unknown type accepts
    nothing.
    """
    cls = registry.get(type_name) if isinstance(type_name, str) else type_name
    if not inspect.isclass(cls):
        return False
    for klass in inspect.getmro(cls):
        if '__init__' not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        if arg in params:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
    return False


def set_config_vocabulary(cfg: Config, registry: Registry, classes: Optional[Sequence] = None,
                          background_words: Optional[Sequence[str]] = None,
                          resolve_background: Optional[Callable] = None) -> Tuple[int, List[str]]:
    """Give every model of the config ``classes`` and/or ``background_words``.

    Background words that are also class names are left out. A class list
    spelled out in the test dataset's ``metainfo`` is replaced too, so the
    dataset counts the same classes.

    Returns:
        tuple: How many model dicts were updated (0: the config has no model
        with a vocabulary) and the background words dropped.
    """
    names = {' '.join(n.lower().split()) for c in (classes or ())
             for n in ([c] if isinstance(c, str) else c)}
    dropped: List[str] = []

    def put(d: dict) -> None:
        if classes is not None:
            d['class_names'] = [c if isinstance(c, str) else list(c) for c in classes]
        if background_words is not None:
            words = list(background_words)
        elif classes is not None and resolve_background is not None:
            words = list(resolve_background(d.get('background_words', ())))
        else:
            return
        kept = [w for w in words if ' '.join(w.lower().split()) not in names]
        dropped.extend(w for w in words if w not in kept and w not in dropped)
        d['background_words'] = kept

    n = 0
    for d in list(iter_dicts(cfg.get('model', {}))):
        if type_accepts(registry, d.get('type'), 'class_names'):
            put(d)
            n += 1
        elif type_accepts(registry, d.get('type'), 'labeler'):
            for part in ('labeler', 'tagger'):
                if d.get(part) is None:
                    d[part] = {}
                put(d[part])
            n += 1
    meta = (cfg.get('test_dataloader') or {}).get('dataset', {}).get('metainfo')
    if classes is not None and isinstance(meta, dict) and meta.get('classes'):
        first = ['background'] if list(meta['classes'])[0] == 'background' else []
        meta['classes'] = first + [class_key(c) for c in classes]
        meta.pop('tag_classes', None)
    return n, dropped

"""Turn what a user hands the inferencer into a tagger and a labeler config.

A config file, its bare name or nothing becomes a ``TagCLIP`` config and a
``CLIPESPseudoLabeler`` config that share checkpoint, vocabulary and
background words.
"""
import copy
import glob
import os
import os.path as osp
from typing import List, Optional, Tuple

from mmengine.config import Config, ConfigDict
from mmseg.registry import DATASETS

from ..models.clip.checkpoint import DEFAULT_CLIP_CHECKPOINT
from ..models.clip.presets import cam_class_names, default_background_words
from ..utils.class_names import class_key
from ..utils.config import iter_dicts, set_clip_checkpoint

__all__ = [
    'config_roots', 'find_config', 'load_model_config', 'split_models', 'config_vocabulary',
    'cam_class_names', 'default_background_words', 'class_key', 'default_tagger_cfg',
    'labeler_cfg_for', 'labeler_config', 'set_text_cache_dir', 'to_plain_dict'
]

TAGGER_TYPE = 'TagCLIP'
LABELER_TYPE = 'CLIPESPseudoLabeler'
_CONFIG_GROUPS = ('tagclip', 'pseudo_labelers')


def config_roots() -> List[str]:
    """Folders searched for config names: ``configs/`` and ``tagclip_mmseg/.mim/configs``."""
    package = osp.dirname(osp.dirname(osp.abspath(__file__)))
    roots = [osp.join(osp.dirname(package), 'configs'), osp.join(package, '.mim', 'configs')]
    return [r for r in roots if osp.isdir(r)]


def find_config(name: str) -> str:
    """Path of a config given as a file path or a bare name.

    ``'tagclip_vit-b16_voc12-val'`` finds ``configs/tagclip/<name>.py`` (or
    ``configs/pseudo_labelers/<name>.py``).

    Raises:
        FileNotFoundError: With the names that do exist.
    """
    if osp.isfile(name):
        return name
    stem = osp.splitext(osp.basename(name))[0]
    available = []
    for root in config_roots():
        for group in _CONFIG_GROUPS:
            hits = glob.glob(osp.join(root, group, f'{stem}.py'))
            if hits:
                return hits[0]
            available += sorted(osp.splitext(osp.basename(p))[0]
                                for p in glob.glob(osp.join(root, group, '*.py')))
    raise FileNotFoundError(
        f'config {name!r} is neither a file nor a known config name. Known names: '
        f'{", ".join(available) or "(none found)"}. Pass a path to a config file, or model=None '
        'with classes=[...] to build the default TagCLIP.')


def load_model_config(model, checkpoint: Optional[str] = None) -> Config:
    """Load ``model`` (path, name, Config or dict) and point its CLIPs at ``checkpoint``.

    Args:
        model (str | Config | dict): A config file, a config name, a loaded
            Config, or a dict holding at least ``model=dict(type=...)``.
        checkpoint (str, optional): CLIP weights replacing every
            ``clip=dict(checkpoint=...)`` of the config; None keeps the
            config's.

    Returns:
        Config: A copy; the caller's object is not modified.
    """
    if isinstance(model, (str, os.PathLike)):
        cfg = Config.fromfile(find_config(os.fspath(model)))
    elif isinstance(model, Config):
        cfg = copy.deepcopy(model)
    elif isinstance(model, dict):
        cfg = Config(copy.deepcopy(dict(model)))
    else:
        raise TypeError(f'model must be a config path, a config name, a Config or a dict, got '
                        f'{type(model).__name__}')
    if 'model' not in cfg:
        raise ValueError('the config has no "model" entry; expected a configs/tagclip/ or '
                         'configs/pseudo_labelers/ config')
    if checkpoint is not None:
        set_clip_checkpoint(cfg, checkpoint)
    return cfg


def _type_name(cfg) -> str:
    return str(cfg.get('type', '')).split('.')[-1]


def split_models(model_cfg: dict) -> Tuple[dict, Optional[dict]]:
    """(tagger config, labeler config or None) of a config's ``model``.

    A labeler that embeds a tagger is split in two, so its scores can be
    reported.

    Raises:
        ValueError: For a model that is neither, or a labeler without tagger.
    """
    model_cfg = copy.deepcopy(dict(model_cfg))
    kind = _type_name(model_cfg)
    if kind == TAGGER_TYPE:
        return model_cfg, None
    if kind == LABELER_TYPE:
        tagger = model_cfg.pop('tagger', None)
        if tagger is None:
            raise ValueError(f'this {LABELER_TYPE} config takes its tags from a file or the '
                             'ground truth (it has no tagger=...). Give it as labeler=... next '
                             'to a tagging config, e.g. TagCLIPInferencer("configs/tagclip/'
                             'tagclip_vit-b16_voc12-val.py", labeler=THIS_CONFIG), or use a '
                             '*_tagclip-chain.py config')
        return dict(tagger), model_cfg
    raise ValueError(f'the inferencer runs {TAGGER_TYPE} (and {LABELER_TYPE}) models; the config '
                     f'builds {model_cfg.get("type")!r}')


def labeler_config(labeler, checkpoint: Optional[str] = None) -> dict:
    """The CLIP-ES labeler settings of ``labeler`` (a config or a model dict).

    Its tagger, if any, is dropped: the inferencer's tagger provides the tags.

    Args:
        labeler (str | Config | dict): A pseudo-label config (path, name or
            loaded), or the labeler's model dict itself (with ``type``).
        checkpoint (str, optional): CLIP weights replacing the config's.

    Raises:
        ValueError: When it does not describe a ``CLIPESPseudoLabeler``.
    """
    if isinstance(labeler, dict) and not isinstance(labeler, Config) and 'type' in labeler:
        cfg = to_plain_dict(labeler)
        if checkpoint is not None and isinstance(cfg.get('clip'), dict):
            cfg['clip']['checkpoint'] = checkpoint
    else:
        cfg = to_plain_dict(load_model_config(labeler, checkpoint).model)
    if _type_name(cfg) != LABELER_TYPE:
        raise ValueError(f'labeler must configure a {LABELER_TYPE}, got {cfg.get("type")!r}')
    cfg.pop('tagger', None)
    return cfg


def config_vocabulary(cfg: Config) -> Tuple[Optional[list], Optional[list]]:
    """Classes and background words a config's test dataset defines.

    The test dataset's ``metainfo`` in the config, else its class's
    ``METAINFO`` (what ``VocabularyHook`` would copy).
    """
    dataset = cfg.get('test_dataloader', {}).get('dataset') or {}
    while dataset.get('dataset') is not None:  # wrappers (RepeatDataset, ...)
        dataset = dataset['dataset']
    meta = dict(dataset.get('metainfo') or {})
    if not meta.get('classes') and dataset.get('type'):
        try:
            meta = {**dict(getattr(DATASETS.get(dataset['type']), 'METAINFO', {})), **meta}
        except (KeyError, TypeError):  # unregistered type: nothing to read
            pass
    classes, words = meta.get('classes'), meta.get('background_words')
    return (list(classes) if classes else None, list(words) if words is not None else None)


def default_tagger_cfg(checkpoint: Optional[str]) -> dict:
    """A TagCLIP config with the reference settings and no vocabulary."""
    return dict(type=TAGGER_TYPE, clip=dict(checkpoint=checkpoint or DEFAULT_CLIP_CHECKPOINT))


def labeler_cfg_for(tagger_cfg: dict) -> dict:
    """A CLIP-ES labeler config matching a tagger (same CLIP, same quirks)."""
    cfg = dict(type=LABELER_TYPE, clip=copy.deepcopy(dict(tagger_cfg.get('clip') or {})))
    for key in ('quirks', 'mode', 'text_cache_dir'):  # mode: deprecated spelling of quirks
        if key in tagger_cfg:
            cfg[key] = tagger_cfg[key]
    return cfg


def set_text_cache_dir(*model_cfgs: Optional[dict], cache_dir: str) -> None:
    """Point every CLIP model config (nested taggers included) at ``cache_dir``."""
    for model_cfg in model_cfgs:
        for d in iter_dicts(model_cfg or {}):
            if _type_name(d) in (TAGGER_TYPE, LABELER_TYPE):
                d['text_cache_dir'] = cache_dir


def to_plain_dict(cfg) -> dict:
    """A ConfigDict (nested) as plain dicts, for editing before ``MODELS.build``."""
    return cfg.to_dict() if isinstance(cfg, ConfigDict) else copy.deepcopy(dict(cfg))

"""Named vocabularies and template sets, so configs can say ``'voc'``.

Each preset is a tuple of :mod:`~tagclip_mmseg.models.clip.prompts` or
:mod:`~tagclip_mmseg.utils.class_names`.
"""
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ...utils.class_names import COCO_CLASSES, VOC_CLASSES, ClassName, class_key
from ...utils.name_files import name_file_spec
from .prompts import (CLIPES_TEMPLATES, COCO_BACKGROUND, COCO_CAM_RENAMES, COCO_STUFF_BACKGROUND,
                      COCO_STUFF_CAM_RENAMES, COCO_STUFF_CLASSES, TAGCLIP_TEMPLATES, VOC_BACKGROUND,
                      VOC_CAM_RENAMES, apply_renames)

__all__ = ['TEMPLATE_PRESETS', 'CAM_RENAME_PRESETS', 'CLASS_PRESETS', 'BACKGROUND_PRESETS',
           'resolve_templates', 'resolve_classes', 'resolve_background', 'cam_class_names',
           'default_background_words']

TEMPLATE_PRESETS: Dict[str, Tuple[str, ...]] = {
    'tagclip': TAGCLIP_TEMPLATES,
    'clip-es': CLIPES_TEMPLATES,
}

#: CLIP-ES's CAM-stage renames of each benchmark vocabulary.
CAM_RENAME_PRESETS: Dict[str, Mapping[str, str]] = {
    'voc': VOC_CAM_RENAMES,
    'coco': COCO_CAM_RENAMES,
    'cocostuff': COCO_STUFF_CAM_RENAMES,
}

#: Foreground vocabularies; ``*-cam`` are CLIP-ES's renamed CAM-stage names.
CLASS_PRESETS: Dict[str, Tuple[ClassName, ...]] = {
    'voc': VOC_CLASSES,
    'coco': COCO_CLASSES,
    'cocostuff': COCO_STUFF_CLASSES,
}
CLASS_PRESETS.update({f'{name}-cam': tuple(apply_renames(CLASS_PRESETS[name], renames))
                      for name, renames in CAM_RENAME_PRESETS.items()})

BACKGROUND_PRESETS: Dict[str, Tuple[str, ...]] = {
    'voc': VOC_BACKGROUND,
    'coco': COCO_BACKGROUND,
    'cocostuff': (),
    'cocostuff-cam': COCO_STUFF_BACKGROUND,
    'none': (),
}


def _resolve(value, presets: dict, what: str, from_file: Optional[Callable] = None) -> tuple:
    if isinstance(value, str) and value in presets:
        return tuple(presets[value])
    names = None if from_file is None else name_file_spec(value)
    if names is not None:
        return tuple(from_file(names))
    if isinstance(value, str):
        files = '' if from_file is None else \
            ', a name file (a path ending in .txt, or dict(file=PATH, sep=...))'
        raise ValueError(f'unknown {what} preset {value!r}; use one of {sorted(presets)}{files} '
                         'or give the list itself')
    return tuple(value)


def resolve_templates(value: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """A template preset name or a list of templates -> tuple of templates."""
    return _resolve(value, TEMPLATE_PRESETS, 'template')


def resolve_classes(value: Union[str, Sequence[ClassName]]) -> Tuple[ClassName, ...]:
    """A class preset name, a name file or a list of names/synonym lists -> tuple.

    See :func:`~tagclip_mmseg.utils.name_files.name_file_spec`.
    """
    return _resolve(value, CLASS_PRESETS, 'class vocabulary', lambda f: f.classes())


def resolve_background(value: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """A background-word preset name, a name file or a list of words -> tuple.

    From a name file: every name of every line, or only line 1's with
    ``first_line='background'``.
    """
    return _resolve(value, BACKGROUND_PRESETS, 'background words', lambda f: f.background_words())


def cam_class_names(classes: Sequence[ClassName]) -> List[ClassName]:
    """Class names for the CAM stage: CLIP-ES's renames for benchmark vocabularies.

    Other vocabularies are used as given.
    """
    keys = {class_key(c) for c in classes}
    for name, renames in CAM_RENAME_PRESETS.items():
        if keys <= set(CLASS_PRESETS[name]):
            return apply_renames(classes, renames)
    return list(classes)


def default_background_words(classes: Sequence[ClassName]) -> Tuple[str, ...]:
    """TagCLIP's VOC background words, minus any that is also a class.

    The VOC list is generic enough for everyday photos.
    """
    taken = {class_key(c) for c in classes}
    return tuple(w for w in BACKGROUND_PRESETS['voc'] if w not in taken)

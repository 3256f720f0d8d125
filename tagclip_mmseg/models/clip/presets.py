"""Named vocabularies and template sets, so configs can say ``'voc'``.

Configs may spell a vocabulary out (any open vocabulary works) or name one of
the benchmark presets below; the names keep the published configs short
without hiding anything: each preset is the tuple defined in
:mod:`tagclip_mmseg.models.clip.prompts`.
"""
from typing import Dict, Sequence, Tuple, Union

from .prompts import (CLIPES_TEMPLATES, COCO_BACKGROUND, COCO_CAM_RENAMES, COCO_CLASSES,
                      COCO_STUFF_BACKGROUND, COCO_STUFF_CAM_RENAMES, COCO_STUFF_CLASSES,
                      TAGCLIP_TEMPLATES, VOC_BACKGROUND, VOC_CAM_RENAMES, VOC_CLASSES, ClassName,
                      apply_renames)

__all__ = ['TEMPLATE_PRESETS', 'CLASS_PRESETS', 'BACKGROUND_PRESETS', 'resolve_templates',
           'resolve_classes', 'resolve_background']

TEMPLATE_PRESETS: Dict[str, Tuple[str, ...]] = {
    'tagclip': TAGCLIP_TEMPLATES,
    'clip-es': CLIPES_TEMPLATES,
}

#: Foreground vocabularies; ``*-cam`` are CLIP-ES's renamed CAM-stage names.
CLASS_PRESETS: Dict[str, Tuple[ClassName, ...]] = {
    'voc': VOC_CLASSES,
    'coco': COCO_CLASSES,
    'cocostuff': COCO_STUFF_CLASSES,
    'voc-cam': tuple(apply_renames(VOC_CLASSES, VOC_CAM_RENAMES)),
    'coco-cam': tuple(apply_renames(COCO_CLASSES, COCO_CAM_RENAMES)),
    'cocostuff-cam': tuple(apply_renames(COCO_STUFF_CLASSES, COCO_STUFF_CAM_RENAMES)),
}

BACKGROUND_PRESETS: Dict[str, Tuple[str, ...]] = {
    'voc': VOC_BACKGROUND,
    'coco': COCO_BACKGROUND,
    'cocostuff': (),
    'cocostuff-cam': COCO_STUFF_BACKGROUND,
    'none': (),
}


def _resolve(value, presets: dict, what: str) -> tuple:
    if isinstance(value, str):
        if value not in presets:
            raise ValueError(f'unknown {what} preset {value!r}; use one of {sorted(presets)} '
                             'or give the list itself')
        return tuple(presets[value])
    return tuple(value)


def resolve_templates(value: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """A template preset name or a list of templates -> tuple of templates."""
    return _resolve(value, TEMPLATE_PRESETS, 'template')


def resolve_classes(value: Union[str, Sequence[ClassName]]) -> Tuple[ClassName, ...]:
    """A class preset name or a list of names/synonym lists -> tuple."""
    return _resolve(value, CLASS_PRESETS, 'class vocabulary')


def resolve_background(value: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """A background-word preset name or a list of words -> tuple."""
    return _resolve(value, BACKGROUND_PRESETS, 'background words')

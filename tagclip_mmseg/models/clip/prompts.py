"""Prompt templates and text vocabularies of TagCLIP and CLIP-ES.

Strings are kept exactly as the reference spells them, typos included
(docs/method.md, "Text classifiers and vocabularies"); the class lists live in
:mod:`tagclip_mmseg.utils.class_names`.
"""
from typing import Dict, List, Mapping, Sequence, Tuple

from ...utils.class_names import COCOSTUFF_171_CLASSES, ClassName

__all__ = [
    'IMAGENET_TEMPLATES', 'TAGCLIP_SCENE_TEMPLATES', 'TAGCLIP_TEMPLATES', 'CLIPES_TEMPLATES',
    'COCO_STUFF_CLASSES', 'VOC_BACKGROUND', 'COCO_BACKGROUND', 'COCO_STUFF_BACKGROUND',
    'VOC_CAM_RENAMES', 'COCO_CAM_RENAMES', 'COCO_STUFF_CAM_RENAMES', 'apply_renames', 'text_key'
]


def text_key(text: str) -> str:
    """``text`` as CLIP's tokenizer reads it (lower case, collapsed spaces)."""
    return ' '.join(text.lower().split())

# --------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------

#: OpenAI's 80 ImageNet prompt templates, in the notebook's order.
IMAGENET_TEMPLATES: Tuple[str, ...] = (
    'a bad photo of a {}.',
    'a photo of many {}.',
    'a sculpture of a {}.',
    'a photo of the hard to see {}.',
    'a low resolution photo of the {}.',
    'a rendering of a {}.',
    'graffiti of a {}.',
    'a bad photo of the {}.',
    'a cropped photo of the {}.',
    'a tattoo of a {}.',
    'the embroidered {}.',
    'a photo of a hard to see {}.',
    'a bright photo of a {}.',
    'a photo of a clean {}.',
    'a photo of a dirty {}.',
    'a dark photo of the {}.',
    'a drawing of a {}.',
    'a photo of my {}.',
    'the plastic {}.',
    'a photo of the cool {}.',
    'a close-up photo of a {}.',
    'a black and white photo of the {}.',
    'a painting of the {}.',
    'a painting of a {}.',
    'a pixelated photo of the {}.',
    'a sculpture of the {}.',
    'a bright photo of the {}.',
    'a cropped photo of a {}.',
    'a plastic {}.',
    'a photo of the dirty {}.',
    'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.',
    'a photo of the {}.',
    'a good photo of the {}.',
    'a rendering of the {}.',
    'a {} in a video game.',
    'a photo of one {}.',
    'a doodle of a {}.',
    'a close-up photo of the {}.',
    'a photo of a {}.',
    'the origami {}.',
    'the {} in a video game.',
    'a sketch of a {}.',
    'a doodle of the {}.',
    'a origami {}.',
    'a low resolution photo of a {}.',
    'the toy {}.',
    'a rendition of the {}.',
    'a photo of the clean {}.',
    'a photo of a large {}.',
    'a rendition of a {}.',
    'a photo of a nice {}.',
    'a photo of a weird {}.',
    'a blurry photo of a {}.',
    'a cartoon {}.',
    'art of a {}.',
    'a sketch of the {}.',
    'a embroidered {}.',
    'a pixelated photo of a {}.',
    'itap of the {}.',
    'a jpeg corrupted photo of the {}.',
    'a good photo of a {}.',
    'a plushie {}.',
    'a photo of the nice {}.',
    'a photo of the small {}.',
    'a photo of the weird {}.',
    'the cartoon {}.',
    'art of the {}.',
    'a drawing of the {}.',
    'a photo of the large {}.',
    'a black and white photo of a {}.',
    'the plushie {}.',
    'a dark photo of a {}.',
    'itap of a {}.',
    'graffiti of the {}.',
    'a toy {}.',
    'itap of my {}.',
    'a photo of a cool {}.',
    'a photo of a small {}.',
    'a tattoo of the {}.',
)

#: TagCLIP's five scene templates.
TAGCLIP_SCENE_TEMPLATES: Tuple[str, ...] = (
    'there is a {} in the scene.',
    'there is the {} in the scene.',
    'this is a {} in the scene.',
    'this is the {} in the scene.',
    'this is one {} in the scene.',
)

#: The 85 templates of TagCLIP's classifier.
TAGCLIP_TEMPLATES: Tuple[str, ...] = IMAGENET_TEMPLATES + TAGCLIP_SCENE_TEMPLATES

#: CLIP-ES's single CAM-stage template.
CLIPES_TEMPLATES: Tuple[str, ...] = ('a clean origami {}.', )

# --------------------------------------------------------------------------
# Vocabularies (docs/method.md, "TagCLIP's classifier text")
# --------------------------------------------------------------------------

#: TagCLIP's 171 COCO-Stuff classes (alias of the datasets' list).
COCO_STUFF_CLASSES: Tuple[str, ...] = COCOSTUFF_171_CLASSES

#: Background words appended to the VOC vocabulary as softmax competitors.
VOC_BACKGROUND: Tuple[str, ...] = (
    'ground', 'land', 'grass', 'tree', 'building', 'wall', 'sky', 'lake', 'water', 'river', 'sea',
    'railway', 'railroad', 'keyboard', 'helmet', 'cloud', 'house', 'mountain', 'ocean', 'road',
    'rock', 'street', 'valley', 'bridge', 'sign')

#: COCO's background words: VOC's without 'keyboard' (a COCO class) and 'sign'.
COCO_BACKGROUND: Tuple[str, ...] = tuple(w for w in VOC_BACKGROUND if w not in ('keyboard', 'sign'))

#: COCO-Stuff's CAM-stage background; its classifier has none.
COCO_STUFF_BACKGROUND: Tuple[str, ...] = ('background', )

# --------------------------------------------------------------------------
# CAM-stage renames (docs/method.md, "CLIP-ES's CAM text")
# --------------------------------------------------------------------------

VOC_CAM_RENAMES: Dict[str, str] = {
    'bird': 'bird avian',
    'chair': 'chair seat',
    'person': 'person with clothes,people,human',
    'tvmonitor': 'tvmonitor screen',
}

COCO_CAM_RENAMES: Dict[str, str] = {
    'person': 'person with clothes,people,human',
    'bird': 'bird avian',
    'backpack': 'backpack,bag',
    'umbrella': 'umbrella,parasol',
    'handbag': 'handbag,purse',
    'tie': 'necktie',
    'snowboard': 'sknowboard',  # sic: the reference's typo, kept for the published numbers
    'baseball glove': 'glove',
    'spoon': 'dessertspoon',
    'chair': 'chair seat',
    'tvmonitor': 'tvmonitor screen',
    'remote': 'remote control',
    'hair drier': 'hairdrier,blowdrier',
}

#: COCO's thing renames plus the two COCO-Stuff spellings that differ.
COCO_STUFF_CAM_RENAMES: Dict[str, str] = {
    **COCO_CAM_RENAMES,
    'airplane': 'aeroplane',
    'tv': 'tvmonitor screen',
}


def apply_renames(names: Sequence[ClassName], renames: Mapping[str, str]) -> List[ClassName]:
    """Replace class names by their CAM-stage wording; other names unchanged."""
    return [renames.get(n, n) if isinstance(n, str) else n for n in names]

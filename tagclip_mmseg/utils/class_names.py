"""Class lists, palettes and label-space maps of the benchmark datasets.

Names follow TagCLIP's classifier vocabulary (docs/method.md, "TagCLIP's
classifier text"). COCO-Stuff's 182 ids (the GT PNGs), 171 indices (without
the 11 unannotated ids) and 27 coarse classes all derive from
:data:`COCOSTUFF_182`.
"""
from typing import List, Sequence, Tuple, Union

__all__ = [
    'VOC_CLASSES', 'COCO_CLASSES', 'COCO_CATEGORY_IDS', 'COCOSTUFF_182', 'COCOSTUFF_UNUSED_IDS',
    'COCOSTUFF_171_CLASSES', 'COCOSTUFF_27_CLASSES', 'COCOSTUFF_182_TO_171', 'COCOSTUFF_182_TO_27',
    'COCOSTUFF_171_TO_27', 'COCOSTUFF_182_TO_OBJECT', 'voc_palette', 'ClassName', 'class_key'
]

#: A class is one name, or several synonyms that CLIP-ES joins with ','.
ClassName = Union[str, Sequence[str]]


def class_key(name: ClassName) -> str:
    """Display name of a class: the name, or the first of its synonyms."""
    return name if isinstance(name, str) else name[0]


VOC_CLASSES: Tuple[str, ...] = (
    'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
    'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train',
    'tvmonitor')

COCO_CLASSES: Tuple[str, ...] = (
    'person', 'bicycle', 'car', 'motorbike', 'aeroplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog',
    'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella',
    'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball', 'kite',
    'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket', 'bottle',
    'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich',
    'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'sofa',
    'pottedplant', 'bed', 'diningtable', 'toilet', 'tvmonitor', 'laptop', 'mouse', 'remote',
    'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book',
    'clock', 'vase', 'scissors', 'teddy bear', 'hair drier', 'toothbrush')

#: The 27 COCO-Stuff super-categories in the benchmark's index order (12
#: thing groups, then 15 stuff groups; food and furniture exist in both).
COCOSTUFF_27_CLASSES: Tuple[str, ...] = (
    'electronic', 'appliance', 'food-things', 'furniture-things', 'indoor', 'kitchen', 'accessory',
    'animal', 'outdoor', 'person', 'sports', 'vehicle', 'ceiling', 'floor', 'food-stuff',
    'furniture-stuff', 'rawmaterial', 'textile', 'wall', 'window', 'building', 'ground', 'plant',
    'sky', 'solid', 'structural', 'water')


def _things(group: str, names: str) -> List[Tuple[str, str]]:
    return [(name, group) for name in names.split(',')]


#: The official COCO-Stuff dictionary: (name, super-category) for the 0-based
#: ids 0..181. Things keep COCO's own names here (``motorcycle``, ``tv``...).
COCOSTUFF_182: Tuple[Tuple[str, str], ...] = tuple(
    _things('person', 'person') +
    _things('vehicle', 'bicycle,car,motorcycle,airplane,bus,train,truck,boat') +
    _things('outdoor', 'traffic light,fire hydrant,street sign,stop sign,parking meter,bench') +
    _things('animal', 'bird,cat,dog,horse,sheep,cow,elephant,bear,zebra,giraffe') +
    _things('accessory', 'hat,backpack,umbrella,shoe,eye glasses,handbag,tie,suitcase') +
    _things('sports', 'frisbee,skis,snowboard,sports ball,kite,baseball bat,baseball glove,'
            'skateboard,surfboard,tennis racket') +
    _things('kitchen', 'bottle,plate,wine glass,cup,fork,knife,spoon,bowl') +
    _things('food-things', 'banana,apple,sandwich,orange,broccoli,carrot,hot dog,pizza,donut,'
            'cake') +
    _things('furniture-things', 'chair,couch,potted plant,bed,mirror,dining table,window,desk,'
            'toilet,door') +
    _things('electronic', 'tv,laptop,mouse,remote,keyboard,cell phone') +
    _things('appliance', 'microwave,oven,toaster,sink,refrigerator,blender') +
    _things('indoor', 'book,clock,vase,scissors,teddy bear,hair drier,toothbrush,hair brush') + [
        ('banner', 'textile'), ('blanket', 'textile'), ('branch', 'plant'),
        ('bridge', 'building'), ('building-other', 'building'), ('bush', 'plant'),
        ('cabinet', 'furniture-stuff'), ('cage', 'structural'), ('cardboard', 'rawmaterial'),
        ('carpet', 'floor'), ('ceiling-other', 'ceiling'), ('ceiling-tile', 'ceiling'),
        ('cloth', 'textile'), ('clothes', 'textile'), ('clouds', 'sky'),
        ('counter', 'furniture-stuff'), ('cupboard', 'furniture-stuff'), ('curtain', 'textile'),
        ('desk-stuff', 'furniture-stuff'), ('dirt', 'ground'), ('door-stuff', 'furniture-stuff'),
        ('fence', 'structural'), ('floor-marble', 'floor'), ('floor-other', 'floor'),
        ('floor-stone', 'floor'), ('floor-tile', 'floor'), ('floor-wood', 'floor'),
        ('flower', 'plant'), ('fog', 'water'), ('food-other', 'food-stuff'),
        ('fruit', 'food-stuff'), ('furniture-other', 'furniture-stuff'), ('grass', 'plant'),
        ('gravel', 'ground'), ('ground-other', 'ground'), ('hill', 'solid'), ('house', 'building'),
        ('leaves', 'plant'), ('light', 'furniture-stuff'), ('mat', 'textile'),
        ('metal', 'rawmaterial'), ('mirror-stuff', 'furniture-stuff'), ('moss', 'plant'),
        ('mountain', 'solid'), ('mud', 'ground'), ('napkin', 'textile'), ('net', 'structural'),
        ('paper', 'rawmaterial'), ('pavement', 'ground'), ('pillow', 'textile'),
        ('plant-other', 'plant'), ('plastic', 'rawmaterial'), ('platform', 'ground'),
        ('playingfield', 'ground'), ('railing', 'structural'), ('railroad', 'ground'),
        ('river', 'water'), ('road', 'ground'), ('rock', 'solid'), ('roof', 'building'),
        ('rug', 'textile'), ('salad', 'food-stuff'), ('sand', 'ground'), ('sea', 'water'),
        ('shelf', 'furniture-stuff'), ('sky-other', 'sky'), ('skyscraper', 'building'),
        ('snow', 'ground'), ('solid-other', 'solid'), ('stairs', 'furniture-stuff'),
        ('stone', 'solid'), ('straw', 'plant'), ('structural-other', 'structural'),
        ('table', 'furniture-stuff'), ('tent', 'building'), ('textile-other', 'textile'),
        ('towel', 'textile'), ('tree', 'plant'), ('vegetable', 'food-stuff'),
        ('wall-brick', 'wall'), ('wall-concrete', 'wall'), ('wall-other', 'wall'),
        ('wall-panel', 'wall'), ('wall-stone', 'wall'), ('wall-tile', 'wall'),
        ('wall-wood', 'wall'), ('water-other', 'water'), ('waterdrops', 'water'),
        ('window-blind', 'window'), ('window-other', 'window'), ('wood', 'solid')
    ])

#: 0-based 182-space ids without annotations (1-based: 12, 26, 29, 30, 45,
#: 66, 68, 69, 71, 83, 91).
COCOSTUFF_UNUSED_IDS: Tuple[int, ...] = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)

#: The official COCO category ids (1-based, with gaps) of the 80 detection
#: classes: the thing ids of COCO-Stuff that carry annotations.
COCO_CATEGORY_IDS: Tuple[int, ...] = tuple(
    i + 1 for i in range(91) if i not in COCOSTUFF_UNUSED_IDS)

#: TagCLIP's COCO-Stuff vocabulary: COCO thing names except two VOC-style ones.
_COCOSTUFF_171_RENAMES = {'potted plant': 'pottedplant', 'dining table': 'diningtable'}
COCOSTUFF_171_CLASSES: Tuple[str, ...] = tuple(
    _COCOSTUFF_171_RENAMES.get(name, name) for i, (name, _) in enumerate(COCOSTUFF_182)
    if i not in COCOSTUFF_UNUSED_IDS)

#: 182-space id -> 171 index (-1 for the unused ids).
COCOSTUFF_182_TO_171: Tuple[int, ...] = tuple(
    -1 if i in COCOSTUFF_UNUSED_IDS else i - sum(u < i for u in COCOSTUFF_UNUSED_IDS)
    for i in range(len(COCOSTUFF_182)))

#: 182-space id (a COCO-Stuff stuffthingmap pixel, COCO category id - 1) ->
#: COCO-Object value: the things 1..80 in COCO category order, the stuff
#: classes 0 (background), -1 for the unused ids.
COCOSTUFF_182_TO_OBJECT: Tuple[int, ...] = tuple(
    -1 if i in COCOSTUFF_UNUSED_IDS else COCOSTUFF_182_TO_171[i] + 1 if i < 91 else 0
    for i in range(len(COCOSTUFF_182)))

#: 182-space id -> 27 coarse index.
COCOSTUFF_182_TO_27: Tuple[int, ...] = tuple(
    COCOSTUFF_27_CLASSES.index(group) for _, group in COCOSTUFF_182)

#: 171 index -> 27 coarse index (for predictions over TagCLIP's vocabulary).
COCOSTUFF_171_TO_27: Tuple[int, ...] = tuple(
    coarse for i, coarse in enumerate(COCOSTUFF_182_TO_27) if i not in COCOSTUFF_UNUSED_IDS)


def voc_palette(num_classes: int) -> List[List[int]]:
    """The PASCAL VOC colour map extended to ``num_classes`` entries.

    Each index's bits are spread over the high bits of R, G and B, which gives
    VOC's own palette for the first 21 entries and distinct colours up to 256.
    """
    palette = []
    for index in range(num_classes):
        rgb = [0, 0, 0]
        code, shift = index, 7
        while code:
            for channel in range(3):
                rgb[channel] |= ((code >> channel) & 1) << shift
            code >>= 3
            shift -= 1
        palette.append(rgb)
    return palette

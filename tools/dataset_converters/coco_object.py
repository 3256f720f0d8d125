r"""Build COCO-object semantic masks (background + 80 classes).

COCO-Object is COCO with background and the 80 thing classes; mmseg ships no
converter for it. Two sources:

**COCO-Stuff's stuffthingmaps** (the default), as the projects that define the
open-vocabulary benchmark build it (docs/open_vocab.md "COCO-Object masks").
Input: mmseg's COCO-Stuff 164k layout, ``<data_root>/images/<split>/*.jpg``
and ``<data_root>/annotations/<split>/<id>.png`` (stuffthingmaps_trainval2017,
pixel value = COCO category id - 1: things 0..90 with the 11 unused ids
absent, stuff 91..181, 255 unlabeled). Output, what
``configs/open_vocab/tagclip_vit-b16_coco-object.py`` reads::

    <data_root>/annotations/<split>/<id>_instanceTrainIds.png

one per image of ``images/<split>`` (all 5,000 of val2017). Things become
``1..80`` in COCO category order; stuff and unlabeled pixels become ``0``, so
there are no ignore pixels and an image without things is all background.

**COCO instances** (``--from-instances``): ``<data_root>/annotations/
instances_<split>.json``, the masks of TagCLIP / CLIP-ES's WSSS evaluation, in
the layout the WSSS configs read (``configs/_base_/datasets/coco-object_*.py``,
``coco14_train_pseudo.py``)::

    <data_root>/SegmentationClass/<split>/<image stem>.png
    <data_root>/<split>_ids.txt

Mask values:

* ``0``: background (no annotation covers the pixel);
* ``1..80``: the COCO category, ``1 + `` its position in the ascending
  category ids (:data:`~tagclip_mmseg.utils.class_names.COCO_CATEGORY_IDS`,
  the order of ``COCO_CLASSES`` and of ``COCOMultiLabelDataset``'s labels);
  so mask value ``v`` is tag index ``v - 1``;
* crowd annotations (``iscrowd=1``, RLE) are painted as their class by
  default, like the processed masks distributed with the WSSS papers and
  like the labels ``COCOMultiLabelDataset`` derives (``include_crowd=True``);
  ``--crowd ignore`` paints them ``255`` instead.

Overlaps: instances are painted largest first (pixel area of the decoded
mask; equal areas in the json's annotation order), so a later, smaller
instance lies on top: a cup on a dining table stays a cup instead of
vanishing under the table. The rule depends on nothing but the json, so the
masks are reproducible; the distributed masks may resolve some overlapping
pixels differently.

Every image of the json gets a mask (all background without annotations).
The id list names the images with at least one annotation (crowd included),
sorted, e.g. 4952 of the 5000 val2017 images, the same set as
``COCOMultiLabelDataset``. It is written after all masks, so its presence
means the split is complete. ``--mask-dir`` and ``--suffix`` write another
layout, e.g. the open-vocabulary one from the json.

Masks are palette (``'P'``) PNGs with the VOC colour map (``--no-palette``:
plain ``'L'``); both read back as indices. Every file is written atomically;
existing masks are kept (``--overwrite`` rebuilds them), so an interrupted
run resumes where it stopped.

Examples::

    python tools/dataset_converters/coco_object.py           # data/coco_stuff164k, val2017
    python tools/dataset_converters/coco_object.py data/coco --from-instances \
        --splits train2014 val2014 val2017 --nproc 8
"""
import argparse
import json
import multiprocessing
import os
import os.path as osp
import sys
from functools import partial
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from mmengine.utils import ProgressBar
from PIL import Image
from pycocotools import mask as mask_utils

from tagclip_mmseg.datasets.label_files import write_label_file
from tagclip_mmseg.evaluation.pseudo_label_writer import encode_label_png
from tagclip_mmseg.records import remove_stale_temp_files
from tagclip_mmseg.utils.class_names import COCO_CATEGORY_IDS, COCOSTUFF_182_TO_OBJECT, voc_palette
from tagclip_mmseg.utils.io import atomic_write_bytes, ensure_writable_dir
from tagclip_mmseg.utils.label_maps import label_lut

__all__ = [
    'IGNORE_INDEX', 'CROWD_MODES', 'OBJECT_SUFFIX', 'category_values', 'annotation_rle',
    'paint_instances', 'stuffthingmap_to_object', 'write_mask', 'write_stuffthingmap_mask',
    'convert_split', 'convert_stuffthingmaps', 'parse_args', 'main'
]

IGNORE_INDEX = 255
CROWD_MODES = ('class', 'ignore')
#: The mask file suffix of the open-vocabulary COCO-Object config (``COCOObjectDataset``).
OBJECT_SUFFIX = '_instanceTrainIds.png'
#: stuffthingmap pixel value -> COCO-Object value; -1 marks values a
#: stuffthingmap never holds (the unused thing ids and 182..254).
_STUFF_LUT = label_lut(COCOSTUFF_182_TO_OBJECT, size=256, fill=-1).numpy()
_STUFF_LUT[IGNORE_INDEX] = 0  # unlabeled: background, as the peers convert it

#: A COCO ``segmentation`` field: polygons, or an (un)compressed RLE dict.
Segmentation = Union[List[List[float]], dict]
#: One image's work: (output path, height, width, [(value, segmentation)]).
Task = Tuple[str, int, int, List[Tuple[int, Segmentation]]]


def category_values(categories: Sequence[dict], ann_file: str = 'the json') -> Dict[int, int]:
    """``{category id: mask value}`` for the 80 COCO categories (values 1..80).

    The order is the package's single COCO order, ``COCO_CATEGORY_IDS``
    (ascending ids), so masks, ``COCO_CLASSES`` and the multi-label labels
    agree. A json with other categories is refused: the masks would not
    match ``COCOObjectTaggedSegDataset``'s 81 classes.

    Raises:
        ValueError: When the json's category ids are not the 80 COCO ones.
    """
    ids = sorted(c['id'] for c in categories)
    if ids != sorted(COCO_CATEGORY_IDS):
        unknown = sorted(set(ids) - set(COCO_CATEGORY_IDS))
        absent = sorted(set(COCO_CATEGORY_IDS) - set(ids))
        raise ValueError(
            f'{ann_file} does not have the 80 COCO categories (unexpected ids {unknown[:10]}, '
            f'missing ids {absent[:10]}); COCO-object masks need an official COCO instances '
            'json such as annotations/instances_val2017.json')
    return {cat_id: i + 1 for i, cat_id in enumerate(COCO_CATEGORY_IDS)}


def annotation_rle(segmentation: Segmentation, height: int, width: int) -> Optional[dict]:
    """A compressed RLE of one annotation's ``segmentation`` field.

    Handles polygons (non-crowd), uncompressed RLE (``counts`` a list, as in
    the crowd annotations) and compressed RLE (``counts`` a string).

    Returns:
        The RLE, or ``None`` for an empty polygon list (covers no pixel).

    Raises:
        ValueError: For an RLE whose ``size`` is not the image's.
    """
    if isinstance(segmentation, list):
        if not segmentation:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if not isinstance(segmentation, dict) or 'counts' not in segmentation:
        raise ValueError(f'segmentation must be a polygon list or an RLE dict with "counts" and '
                         f'"size", got {type(segmentation).__name__}')
    if list(segmentation.get('size', ())) != [height, width]:
        raise ValueError(f'RLE size {segmentation.get("size")} differs from the image size '
                         f'{[height, width]}')
    if isinstance(segmentation['counts'], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def paint_instances(height: int, width: int,
                    instances: Sequence[Tuple[int, Segmentation]]) -> np.ndarray:
    """Paint ``(value, segmentation)`` instances into a ``(H, W)`` uint8 mask.

    Largest instance first, equal areas in the given order; each pixel takes
    the value of the last instance painted over it (see the module doc), 0
    where none does. Computed at once on the stacked masks rather than by
    overwriting in a loop.
    """
    rles, values = [], []
    for value, segmentation in instances:
        rle = annotation_rle(segmentation, height, width)
        if rle is not None:
            rles.append(rle)
            values.append(value)
    if not rles:
        return np.zeros((height, width), dtype=np.uint8)
    stack = mask_utils.decode(rles)  # (H, W, N) uint8 0/1, in the given order
    # Areas from the decoded masks: pycocotools' area() overflows beyond 255 RLEs.
    areas = stack.sum(axis=(0, 1), dtype=np.int64)
    order = np.lexsort((np.arange(len(rles)), -areas))  # paint order
    # Rank 1..N in paint order; the highest rank covering a pixel is the
    # instance painted last there (0: none). A weighted max over the
    # instances axis is much faster than argmax on a reversed view.
    rank = np.empty(len(rles), dtype=np.min_scalar_type(len(rles)))
    rank[order] = np.arange(1, len(rles) + 1)
    top = (stack * rank).max(axis=2)
    lut = np.zeros(len(rles) + 1, dtype=np.uint8)  # rank -> mask value
    lut[rank] = values
    return lut[top]


def stuffthingmap_to_object(stuffthingmap: np.ndarray) -> np.ndarray:
    """COCO-Object values of a stuffthingmap: things 1..80, everything else 0.

    Raises:
        ValueError: For values a stuffthingmap never holds (the unused thing
            ids 11, 25, ..., 90 and 182..254): not a COCO-Stuff mask.
    """
    values = _STUFF_LUT[np.asarray(stuffthingmap, dtype=np.uint8)]
    if (values < 0).any():
        bad = np.unique(stuffthingmap[values < 0])
        raise ValueError(f'values {bad[:5].tolist()} are not COCO-Stuff ids (0..181 without '
                         'the unused thing ids, 255 unlabeled); is this a stuffthingmap?')
    return values.astype(np.uint8)


def write_mask(task: Task, palette: Optional[np.ndarray] = None) -> str:
    """Paint one image's mask from its instances and write it atomically; returns its path."""
    path, height, width, instances = task
    try:
        mask = paint_instances(height, width, instances)
    except ValueError as e:
        raise ValueError(f'cannot paint the mask of {path}: {e}') from e
    atomic_write_bytes(path, encode_label_png(mask, palette))
    return path


def write_stuffthingmap_mask(task: Tuple[str, str], palette: Optional[np.ndarray] = None) -> str:
    """Convert one ``(output path, stuffthingmap path)`` and write it atomically."""
    path, source = task
    with Image.open(source) as img:
        stuffthingmap = np.asarray(img)
    if stuffthingmap.ndim != 2:
        raise ValueError(f'{source} is not a single-channel label map (shape '
                         f'{stuffthingmap.shape})')
    try:
        mask = stuffthingmap_to_object(stuffthingmap)
    except ValueError as e:
        raise ValueError(f'{source}: {e}') from e
    atomic_write_bytes(path, encode_label_png(mask, palette))
    return path


def _image_stem(image: dict) -> str:
    return osp.splitext(osp.basename(image['file_name']))[0]


def _split_tasks(coco: dict, ann_file: str, mask_dir: str, suffix: str,
                 crowd: str) -> Tuple[List[str], List[Task]]:
    """Sorted ids of the annotated images, and the tasks of every image."""
    values = category_values(coco['categories'], ann_file)
    by_image: Dict[int, List[Tuple[int, Segmentation]]] = {}
    for ann in coco['annotations']:
        if ann['category_id'] not in values:
            raise ValueError(f'{ann_file}: annotation {ann.get("id")} has category_id '
                             f'{ann["category_id"]}, which is not a COCO category')
        crowd_ignored = crowd == 'ignore' and ann.get('iscrowd', 0)
        value = IGNORE_INDEX if crowd_ignored else values[ann['category_id']]
        by_image.setdefault(ann['image_id'], []).append((value, ann['segmentation']))

    tasks: Dict[str, Task] = {}
    for image in coco['images']:
        stem = _image_stem(image)
        if stem in tasks:
            raise ValueError(f'{ann_file}: two images are named {stem!r}; masks are named by '
                             'the image file name and would collide')
        tasks[stem] = (osp.join(mask_dir, stem + suffix), int(image['height']),
                       int(image['width']), by_image.get(image['id'], []))
    unknown = set(by_image) - {image['id'] for image in coco['images']}
    if unknown:
        raise ValueError(f'{ann_file}: annotations refer to image ids that are not in its '
                         f'images list, e.g. {sorted(unknown)[:5]}')
    annotated = sorted(stem for stem, task in tasks.items() if task[3])
    return annotated, [tasks[stem] for stem in sorted(tasks)]


def _run(worker: Callable[[tuple], str], tasks: Sequence[tuple], nproc: int,
         progress: bool) -> int:
    """Run ``worker`` on ``tasks`` with ``nproc`` processes; returns how many ran."""
    bar = ProgressBar(len(tasks)) if progress and tasks else None
    done = 0
    if nproc <= 1 or len(tasks) <= 1:
        results: Iterable[str] = map(worker, tasks)
        pool = None
    else:
        pool = multiprocessing.Pool(min(nproc, len(tasks)))
        chunksize = max(1, min(16, len(tasks) // (4 * nproc)))
        results = pool.imap_unordered(worker, tasks, chunksize=chunksize)
    try:
        for _ in results:
            done += 1
            if bar is not None:
                bar.update()
    finally:
        if pool is not None:
            pool.terminate()  # every result is in (or one failed): stop the workers
            pool.join()
        if bar is not None:
            bar.file.write('\n')
    return done


def _write_todo(worker: Callable[..., str], tasks: Sequence[tuple], out_dir: str,
                palette: bool, overwrite: bool, nproc: int, progress: bool) -> Tuple[int, int]:
    """Write the tasks' masks (task[0] is the path) into ``out_dir``; returns (written, kept)."""
    remove_stale_temp_files(out_dir, extensions=('.png', ))
    todo = tasks if overwrite else [t for t in tasks if not osp.isfile(t[0])]
    colours = np.asarray(voc_palette(256), dtype=np.uint8) if palette else None
    written = _run(partial(worker, palette=colours), todo, nproc, progress)
    return written, len(tasks) - written


def convert_split(data_root: str,
                  split: str,
                  mask_dir: str = 'SegmentationClass',
                  suffix: str = '.png',
                  crowd: str = 'class',
                  palette: bool = True,
                  overwrite: bool = False,
                  nproc: int = 1,
                  progress: bool = True) -> Dict[str, Union[int, str]]:
    """Masks from ``annotations/instances_<split>.json``, and ``<split>_ids.txt``.

    Args:
        data_root: The COCO folder holding ``annotations/instances_<split>.json``.
        split: ``'val2017'``, ``'train2014'``, ``'val2014'``, or any name with
            such a json.
        mask_dir: Mask folder, relative to ``data_root`` (or absolute); the
            masks go to ``<mask_dir>/<split>/<stem><suffix>``.
        suffix: Mask file name suffix.
        crowd: ``'class'`` (paint crowd regions as their category) or
            ``'ignore'`` (paint them 255).
        palette: VOC-palette ``'P'`` PNGs; ``False`` for ``'L'``.
        overwrite: Rebuild masks that exist (otherwise they are kept).
        nproc: Worker processes.
        progress: Show a progress bar.

    Returns:
        Counts (``images``, ``listed``: with annotations, ``written``,
        ``existed``) and the paths of the mask folder and id list.
    """
    if crowd not in CROWD_MODES:
        raise ValueError(f'crowd must be one of {CROWD_MODES}, got {crowd!r}')
    ann_file = osp.join(data_root, 'annotations', f'instances_{split}.json')
    if not osp.isfile(ann_file):
        raise FileNotFoundError(f'{ann_file} not found; download the COCO annotations into '
                                f'{osp.join(data_root, "annotations")} or check --splits')
    with open(ann_file, encoding='utf-8') as f:
        coco = json.load(f)
    for key in ('images', 'annotations', 'categories'):
        if key not in coco:
            raise ValueError(f'{ann_file} is not a COCO instances json: it has no {key!r} list')
    out_dir = ensure_writable_dir(osp.join(data_root, mask_dir, split))
    ids, tasks = _split_tasks(coco, ann_file, out_dir, suffix, crowd)
    del coco
    written, existed = _write_todo(write_mask, tasks, out_dir, palette, overwrite, nproc,
                                   progress)
    ids_file = osp.join(data_root, f'{split}_ids.txt')
    write_label_file(ids_file, ((img_id, ()) for img_id in ids))
    return dict(images=len(tasks), listed=len(ids), written=written, existed=existed,
                mask_dir=out_dir, ids_file=ids_file)


def convert_stuffthingmaps(data_root: str,
                           split: str,
                           mask_dir: str = 'annotations',
                           suffix: str = OBJECT_SUFFIX,
                           palette: bool = True,
                           overwrite: bool = False,
                           nproc: int = 1,
                           progress: bool = True) -> Dict[str, Union[int, str]]:
    """A COCO-Object mask per image of ``images/<split>`` from its stuffthingmap.

    Args:
        data_root: mmseg's COCO-Stuff 164k folder: ``images/<split>/*.jpg``
            and the stuffthingmaps ``annotations/<split>/<id>.png``.
        split: ``'val2017'`` (the benchmark) or ``'train2017'``.
        mask_dir: Mask folder, relative to ``data_root`` (or absolute); the
            masks go to ``<mask_dir>/<split>/<id><suffix>``.
        suffix: Mask file name suffix (the config's ``seg_map_suffix``).
        palette: VOC-palette ``'P'`` PNGs; ``False`` for ``'L'``.
        overwrite: Rebuild masks that exist (otherwise they are kept).
        nproc: Worker processes.
        progress: Show a progress bar.

    Returns:
        Counts (``images``, ``written``, ``existed``) and the mask folder.

    Raises:
        FileNotFoundError: Without images, or when an image has no stuffthingmap.
        ValueError: When the masks would overwrite the stuffthingmaps.
    """
    img_dir = osp.join(data_root, 'images', split)
    src_dir = osp.join(data_root, 'annotations', split)
    if not osp.isdir(img_dir):
        raise FileNotFoundError(f'{img_dir} not found; unzip COCO {split}.zip into '
                                f'{osp.join(data_root, "images")} (mmseg\'s COCO-Stuff 164k '
                                'layout) or check --splits')
    stems = sorted(osp.splitext(f)[0] for f in os.listdir(img_dir) if f.endswith('.jpg'))
    if not stems:
        raise FileNotFoundError(f'no .jpg images in {img_dir}')
    out_dir = ensure_writable_dir(osp.join(data_root, mask_dir, split))
    tasks = [(osp.join(out_dir, stem + suffix), osp.join(src_dir, stem + '.png'))
             for stem in stems]
    if osp.realpath(tasks[0][0]) == osp.realpath(tasks[0][1]):
        raise ValueError(f'--mask-dir {mask_dir!r} with --suffix {suffix!r} would overwrite the '
                         'stuffthingmaps; keep the default suffix')
    missing = [src for _, src in tasks if not osp.isfile(src)]
    if missing:
        raise FileNotFoundError(
            f'{len(missing)} of the {len(stems)} images of {img_dir} have no stuffthingmap, '
            f'e.g. {missing[0]}; unzip stuffthingmaps_trainval2017.zip into '
            f'{osp.join(data_root, "annotations")}')
    written, existed = _write_todo(write_stuffthingmap_mask, tasks, out_dir, palette,
                                   overwrite, nproc, progress)
    return dict(images=len(tasks), written=written, existed=existed, mask_dir=out_dir)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Build 81-class COCO-object masks (0 background, 1..80 COCO things) from '
        "COCO-Stuff's stuffthingmaps (default) or from COCO instance annotations "
        '(--from-instances)')
    parser.add_argument('data_root', nargs='?',
                        help='COCO-Stuff 164k folder with images/<split> and the '
                        'stuffthingmaps annotations/<split>/<id>.png (default: '
                        'data/coco_stuff164k); with --from-instances the COCO folder with '
                        'annotations/instances_<split>.json (default: data/coco)')
    parser.add_argument('--from-instances', action='store_true',
                        help='paint the masks from annotations/instances_<split>.json (the '
                        'WSSS masks) instead of converting stuffthingmaps')
    parser.add_argument('--splits', nargs='+', default=['val2017'],
                        help='splits to convert (default: val2017, the COCO-object '
                        'evaluation split; with --from-instances add train2014 for '
                        'coco14_train_pseudo.py)')
    parser.add_argument('--mask-dir',
                        help='mask folder, relative to DATA_ROOT or absolute; masks go to '
                        'MASK_DIR/<split>/<id>SUFFIX (default: annotations; with '
                        '--from-instances SegmentationClass)')
    parser.add_argument('--suffix',
                        help=f'mask file name suffix (default: {OBJECT_SUFFIX}; with '
                        '--from-instances .png)')
    parser.add_argument('--crowd', choices=CROWD_MODES,
                        help="with --from-instances, crowd regions: 'class' paints their "
                        f"category (default), 'ignore' paints {IGNORE_INDEX}")
    parser.add_argument('--no-palette', action='store_true',
                        help="write plain 'L' PNGs instead of VOC-palette 'P' PNGs")
    parser.add_argument('--overwrite', action='store_true',
                        help='rebuild masks that already exist (default: keep them)')
    parser.add_argument('--nproc', type=int, default=1, help='worker processes (default: 1)')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    args = parser.parse_args(argv)
    if args.nproc < 1:
        parser.error(f'--nproc must be at least 1, got {args.nproc}')
    if args.crowd is not None and not args.from_instances:
        parser.error('--crowd applies to --from-instances only (stuffthingmaps carry no '
                     'crowd flag)')
    instances = args.from_instances
    if args.data_root is None:
        args.data_root = 'data/coco' if instances else 'data/coco_stuff164k'
    if args.mask_dir is None:
        args.mask_dir = 'SegmentationClass' if instances else 'annotations'
    if args.suffix is None:
        args.suffix = '.png' if instances else OBJECT_SUFFIX
    if args.crowd is None:
        args.crowd = 'class'
    return args


def _convert_one(args: argparse.Namespace, split: str) -> str:
    """Convert one split as ``args`` say; returns the summary line."""
    common = dict(mask_dir=args.mask_dir, suffix=args.suffix, palette=not args.no_palette,
                  overwrite=args.overwrite, nproc=args.nproc, progress=not args.no_progress)
    if args.from_instances:
        stats = convert_split(args.data_root, split, crowd=args.crowd, **common)
        return (f'{split}: {stats["images"]} images, {stats["listed"]} with annotations '
                f'(listed; the others are all background); {stats["written"]} masks written, '
                f'{stats["existed"]} already existed -> {stats["mask_dir"]}, '
                f'{stats["ids_file"]}')
    stats = convert_stuffthingmaps(args.data_root, split, **common)
    return (f'{split}: {stats["images"]} images; {stats["written"]} masks written, '
            f'{stats["existed"]} already existed -> {stats["mask_dir"]}')


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    for split in args.splits:
        try:
            print(_convert_one(args, split))
        except (FileNotFoundError, PermissionError, ValueError) as e:
            print(f'error: {e}', file=sys.stderr)
            return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())

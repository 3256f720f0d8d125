"""Segmentation datasets that carry image-level tags, for pseudo-label generation.

Each data info gets ``tags``: 0-based indices into
``metainfo['tag_classes']``, from a tags file, the ground truth, or none (the
model tags itself). They also serve as plain mmseg datasets for training.
"""
import logging
import os.path as osp
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from mmengine.logging import print_log
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS
from PIL import Image

from ..utils.class_names import (COCO_CLASSES, COCOSTUFF_27_CLASSES, COCOSTUFF_171_CLASSES,
                                 COCOSTUFF_182_TO_27, COCOSTUFF_182_TO_171, VOC_CLASSES,
                                 voc_palette)
from ..utils.label_maps import label_lut, resolve_index_map
from .label_files import read_id_list, read_label_file
from .utils import (MISSING_IMAGES_KEY, check_choice, image_suffixes, locate_image,
                    missing_image_record, read_metainfo_name_files, read_skipped_list,
                    report_missing, scan_images, skipped_list_path, validate_classes)

__all__ = [
    'TaggedSegDataset', 'VOCTaggedSegDataset', 'COCOObjectTaggedSegDataset',
    'COCOStuff27TaggedSegDataset'
]

TAG_SOURCES = ('file', 'gt', 'none')


@DATASETS.register_module()
class TaggedSegDataset(BaseSegDataset):
    """Images (+ optional GT masks) with image-level tags.

    ``metainfo`` holds ``classes`` (the segmentation classes, background
    first when there is one) and ``tag_classes`` (the vocabulary the tags
    index; by default ``classes`` without ``'background'``).

    Args:
        ann_file (str): Optional split list (joined to ``data_root`` if
            relative). Defaults to '' (scan the image folder).
        data_prefix (dict): ``img_path`` (images) and optionally
            ``seg_map_path`` (GT or pseudo masks).
        tag_source (str): ``'file'``, ``'gt'`` or ``'none'``. Defaults to
            ``'none'``.
        tags_file (str): The tags file (used as given, not joined to
            ``data_root``: it is an experiment output, not part of the data).
        tags_index_map (str | Sequence[int], optional): Translate the tags
            file's indices (e.g. ``'cocostuff182_to_171'``).
        on_missing (str): Listed images, or GT masks, that do not exist, and
            tags for images that are not found: ``'skip'`` (warn, count) or
            ``'raise'``. Defaults to ``'skip'``.
        on_untagged (str): Images with no line in the tags file: ``'raise'``
            (the tagger probably did not finish), ``'skip'`` them, or treat
            them as ``'empty'`` (no tags). Defaults to ``'raise'``. Images
            the tagger itself skipped (listed in the skipped file next to
            the tags file, ``<tags file stem>.skipped.txt``) are always
            skipped and counted, with the tagger's reason.
        img_suffix (str | Sequence[str]): Image extension, or a list of
            them (``['.jpg', '.png']``; a listed id takes the first that
            exists). Defaults to '.jpg'.
        **kwargs: :class:`mmseg.datasets.BaseSegDataset` arguments
            (``seg_map_suffix``, ``metainfo``, ``data_root``,
            ``pipeline``, ``test_mode``, ``ignore_index``...).
    """
    METAINFO: dict = dict()

    def __init__(self,
                 ann_file: str = '',
                 data_prefix: dict = dict(img_path=''),
                 tag_source: str = 'none',
                 tags_file: str = '',
                 tags_index_map: Union[None, str, Sequence[int]] = None,
                 on_missing: str = 'skip',
                 on_untagged: str = 'raise',
                 img_suffix: Union[str, Sequence[str]] = '.jpg',
                 **kwargs) -> None:
        self.tag_source = check_choice('tag_source', tag_source, TAG_SOURCES)
        if tag_source == 'file' and not tags_file:
            raise ValueError("tag_source='file' needs tags_file, the file of "
                             '"image_id idx idx ..." lines written by the tagger')
        if tag_source == 'none' and tags_file:
            raise ValueError(f"tags_file={tags_file!r} is ignored with tag_source='none'; "
                             "use tag_source='file' (or 'gt') to read it")
        self.tags_file = tags_file
        self.tags_index_map = resolve_index_map(tags_index_map)
        self.on_missing = check_choice('on_missing', on_missing, ('skip', 'raise'))
        self.on_untagged = check_choice('on_untagged', on_untagged, ('raise', 'skip', 'empty'))
        #: Counts of what loading left out or flagged, for logs and reports.
        self.skipped: Dict[str, int] = {}
        super().__init__(ann_file=ann_file, data_prefix=data_prefix,
                         img_suffix=image_suffixes(img_suffix), **kwargs)

    @classmethod
    def _load_metainfo(cls, metainfo=None) -> dict:
        meta = super()._load_metainfo(read_metainfo_name_files(metainfo))
        meta['classes'] = validate_classes(meta.get('classes'), cls.__name__)
        tag_classes = meta.get('tag_classes')
        if tag_classes is None:
            tag_classes = tuple(c for c in meta['classes'] if c != 'background')
        meta['tag_classes'] = validate_classes(tag_classes, f'{cls.__name__} tag_classes')
        return meta

    def _update_palette(self) -> list:
        """VOC-style colours for class lists that come without a palette."""
        if not self._metainfo.get('palette'):
            return voc_palette(len(self._metainfo['classes']))
        return super()._update_palette()

    # ----------------------------------------------------------------- masks
    def mask_tag_lut(self) -> np.ndarray:
        """256-entry table: value stored in a GT mask -> tag index, -1 for none.

        A class gives a tag when its name is in ``tag_classes``.
        """
        classes, tag_classes = self._metainfo['classes'], self._metainfo['tag_classes']
        tag_index = {name: i for i, name in enumerate(tag_classes)}
        value_to_tag = {}
        for value in range(256):
            cls = self.label_map.get(value, value) if self.label_map else value
            if cls < len(classes) and classes[cls] in tag_index:
                value_to_tag[value] = tag_index[classes[cls]]
        return label_lut(value_to_tag, size=256).numpy()

    def seg_label_map(self) -> Optional[Dict[int, int]]:
        """The ``label_map`` mmseg's ``LoadAnnotations`` applies to GT masks."""
        return self.label_map

    def _tags_from_mask(self, seg_map_path: str, lut: np.ndarray) -> List[int]:
        try:
            with Image.open(seg_map_path) as mask:
                values = np.unique(np.asarray(mask))
        except Exception as e:
            raise OSError(f'cannot read GT mask {seg_map_path!r} to derive tags: {e}') from e
        if values.size and (values.min() < 0 or values.max() > 255):
            raise ValueError(f'GT mask {seg_map_path!r} has values outside 0..255')
        tags = lut[values]
        return sorted(int(t) for t in tags[tags >= 0])

    # ------------------------------------------------------------- data list
    def _image_ids(self) -> Dict[str, str]:
        """{img_id: image path} from the split list or a folder scan."""
        img_dir = self.data_prefix.get('img_path', '')
        if self.ann_file:
            ids = read_id_list(self.ann_file)
            paths = {i: locate_image(img_dir, i, self.img_suffix) for i in ids}
            missing = [i for i, p in paths.items() if not osp.isfile(p)]
            self.skipped['missing_images'] = report_missing(
                missing, f'images of {self.ann_file!r} do not exist', self.on_missing,
                type(self).__name__)
            self._missing.extend(missing_image_record(i, paths[i]) for i in missing)
            for i in missing:
                del paths[i]
            return paths
        return scan_images(img_dir, self.img_suffix)

    def _read_tags(self, ids: Dict[str, str]) -> Optional[Dict[str, List[int]]]:
        """Tags per id from ``tags_file`` (None when tags come from elsewhere)."""
        if not self.tags_file:
            return None
        num_tags = len(self._metainfo['tag_classes'])
        tags = read_label_file(self.tags_file, num_tags, self.tags_index_map)
        extra = [i for i in tags if i not in ids]
        if extra and self.ann_file:
            print_log(f'{type(self).__name__}: {len(extra)} ids of {self.tags_file!r} are '
                      f'not in the split {self.ann_file!r}; ignored', logger='current')
        elif extra:
            self.skipped['tags_without_image'] = report_missing(
                extra, f'ids of {self.tags_file!r} have no image', self.on_missing,
                type(self).__name__)
        untagged = [i for i in ids if i not in tags]
        # Images the tagger could not read are listed in its skipped file:
        # left out here too, with the tagger's reason, not an error.
        skipped_by_tagger = read_skipped_list(skipped_list_path(self.tags_file))
        known = [i for i in untagged if i in skipped_by_tagger]
        if known:
            self.skipped['skipped_by_tagger'] = len(known)
            print_log(f'{type(self).__name__}: {len(known)} images were skipped by the tagger '
                      f'(listed in {skipped_list_path(self.tags_file)!r}), e.g. {known[:5]}; '
                      'skipped here too', logger='current', level=logging.WARNING)
            self._tagger_skipped.update({i: skipped_by_tagger[i] for i in known})
            untagged = [i for i in untagged if i not in skipped_by_tagger]
        if untagged:
            self.skipped['untagged'] = len(untagged)
            msg = (f'{type(self).__name__}: {len(untagged)} images have no line in '
                   f'{self.tags_file!r}, e.g. {untagged[:5]}')
            if self.on_untagged == 'raise':
                raise ValueError(f"{msg}. Did the tagger finish? Pass on_untagged='skip' to "
                                 "leave them out or 'empty' to label them all background")
            print_log(f'{msg}; ' + ('skipped' if self.on_untagged == 'skip' else
                                    'they get no tags (all background)'),
                      logger='current', level=logging.WARNING)
            if self.on_untagged == 'empty':
                tags.update({i: [] for i in untagged})
        return tags

    def load_data_list(self) -> List[dict]:
        """Build data infos with ``img_id``, optional ``seg_map_path`` and ``tags``."""
        self.skipped = {}
        self._missing: List[dict] = []  # -> metainfo['missing_images'], for the run summaries
        self._tagger_skipped: Dict[str, str] = {}  # img_id -> the tagger's reason
        ids = self._image_ids()
        seg_dir = self.data_prefix.get('seg_map_path')
        if seg_dir is not None:
            seg_paths = {i: osp.join(seg_dir, i + self.seg_map_suffix) for i in ids}
            missing = [i for i, p in seg_paths.items() if not osp.isfile(p)]
            self.skipped['missing_masks'] = report_missing(
                missing, f'segmentation maps are missing in {seg_dir!r}', self.on_missing,
                type(self).__name__)
            self._missing.extend(
                missing_image_record(i, ids[i], f'ground-truth mask not found: {seg_paths[i]}')
                for i in missing)
            for i in missing:
                del ids[i]
        if self.tag_source == 'gt' and not self.tags_file and seg_dir is None:
            raise ValueError("tag_source='gt' needs tags_file or GT masks "
                             "(data_prefix=dict(seg_map_path=...)) to derive the tags from")
        tags = self._read_tags(ids) if self.tag_source != 'none' else None
        lut = self.mask_tag_lut() if self.tag_source == 'gt' and tags is None else None

        data_list = []
        for img_id, img_path in ids.items():
            info = dict(img_path=img_path, img_id=img_id, label_map=self.seg_label_map(),
                        reduce_zero_label=self.reduce_zero_label, seg_fields=[])
            if seg_dir is not None:
                info['seg_map_path'] = seg_paths[img_id]
            if tags is not None:
                if img_id not in tags:  # skipped by the tagger, or on_untagged='skip'
                    reason = self._tagger_skipped.get(img_id)
                    self._missing.append(missing_image_record(
                        img_id, img_path, f'no line in the tags file {self.tags_file}'
                        if reason is None else f'skipped by the tagger: {reason}'))
                    continue
                info['tags'] = list(tags[img_id])
            elif lut is not None:
                info['tags'] = self._tags_from_mask(info['seg_map_path'], lut)
            data_list.append(info)
        self._metainfo[MISSING_IMAGES_KEY] = self._missing
        if self.tag_source != 'none':
            self.skipped['no_tags'] = sum(not info['tags'] for info in data_list)
            if self.skipped['no_tags']:
                print_log(f'{type(self).__name__}: {self.skipped["no_tags"]} of '
                          f'{len(data_list)} images have no tags and will be labelled all '
                          'background', logger='current', level=logging.WARNING)
        return data_list


@DATASETS.register_module()
class VOCTaggedSegDataset(TaggedSegDataset):
    """PASCAL VOC 2012: 21 classes with background, VOC palette.

    Images in ``JPEGImages``; set ``seg_map_path`` to ``SegmentationClass``
    (val) or ``SegmentationClassAug`` (train_aug) for GT masks.
    """
    METAINFO = dict(classes=('background', ) + VOC_CLASSES, palette=voc_palette(21))

    def __init__(self, data_prefix: dict = dict(img_path='JPEGImages'), **kwargs) -> None:
        super().__init__(data_prefix=data_prefix, **kwargs)


@DATASETS.register_module()
class COCOObjectTaggedSegDataset(TaggedSegDataset):
    """COCO-object: background + the 80 COCO classes; masks hold 0..80 (255 ignored).

    TagCLIP and CLIP-ES evaluate on COCO 2017 val with these masks.
    """
    METAINFO = dict(classes=('background', ) + COCO_CLASSES, palette=voc_palette(81))


@DATASETS.register_module()
class COCOStuff27TaggedSegDataset(TaggedSegDataset):
    """COCO-Stuff with the 27 coarse classes; tags over TagCLIP's 171 classes.

    GT masks (182 ids) are mapped to 27 classes through ``label_map``; use
    TagCLIP's 182-space list with ``tags_index_map='cocostuff182_to_171'``.
    """
    METAINFO = dict(
        classes=COCOSTUFF_27_CLASSES,
        tag_classes=COCOSTUFF_171_CLASSES,
        palette=voc_palette(len(COCOSTUFF_27_CLASSES)))

    def mask_tag_lut(self) -> np.ndarray:
        """Raw 182-id mask value -> 171 tag index (unused ids and 255: -1)."""
        return label_lut(COCOSTUFF_182_TO_171, size=256).numpy()

    def seg_label_map(self) -> Dict[int, int]:
        """182 -> 27, followed by the class-subset map when classes were subset."""
        coarse = dict(enumerate(COCOSTUFF_182_TO_27))
        if self.label_map:
            coarse = {fine: self.label_map.get(c, c) for fine, c in coarse.items()}
        return coarse

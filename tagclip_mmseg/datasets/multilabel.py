"""Multi-label classification datasets for tagging (and its mAP/F1 evaluation).

Which dataset serves which benchmark is in docs/method.md, "Datasets".
"""
import json
import os.path as osp
from typing import Dict, List, Optional, Sequence, Union

from mmengine.dataset import BaseDataset
from mmengine.logging import print_log
from mmseg.registry import DATASETS

from ..utils.class_names import COCO_CLASSES, COCOSTUFF_171_CLASSES, VOC_CLASSES
from ..utils.label_maps import resolve_index_map
from .image_io import IMG_EXTENSIONS
from .label_files import read_id_list, read_label_file
from .utils import (MISSING_IMAGES_KEY, check_choice, image_suffixes, join_root, locate_image,
                    missing_image_record, read_metainfo_name_files, report_missing, scan_images,
                    validate_classes)

__all__ = [
    'MultiLabelImageFolder', 'MultiLabelListDataset', 'VOCMultiLabelDataset',
    'COCOStuffMultiLabelDataset', 'COCOMultiLabelDataset'
]

IndexMap = Union[None, str, Sequence[int]]


class _MultiLabelDataset(BaseDataset):
    """Shared behaviour: validated classes, ``get_cat_ids``, missing-file skips.

    Args:
        on_missing (str): ``'skip'`` (warn and count) or ``'raise'`` for a missing image.
        label_index_map (str | Sequence[int], optional): Translate label
            indices of a label file (see :func:`read_label_file`).
        **kwargs: :class:`mmengine.dataset.BaseDataset` arguments.
    """
    METAINFO: dict = dict()

    def __init__(self, on_missing: str = 'skip', label_index_map: IndexMap = None,
                 **kwargs) -> None:
        self.on_missing = check_choice('on_missing', on_missing, ('skip', 'raise'))
        self.label_index_map = resolve_index_map(label_index_map)
        #: How many entries were skipped because their image is missing.
        self.num_missing = 0
        super().__init__(**kwargs)

    @classmethod
    def _load_metainfo(cls, metainfo=None) -> dict:
        meta = super()._load_metainfo(read_metainfo_name_files(metainfo))
        meta['classes'] = validate_classes(meta.get('classes'), cls.__name__, synonyms=True)
        return meta

    @property
    def num_classes(self) -> int:
        return len(self._metainfo['classes'])

    def get_cat_ids(self, idx: int) -> List[int]:
        """Class indices of image ``idx`` (empty when labels are unknown)."""
        return list(self.get_data_info(idx).get('gt_label', []))

    def _read_labels(self) -> Dict[str, List[int]]:
        """``{img_id: class indices}`` of the label file ``ann_file``."""
        return read_label_file(self.ann_file, self.num_classes, self.label_index_map)

    def _data_list(self, ids: Sequence[str], paths: Dict[str, str],
                   labels: Optional[Dict[str, List[int]]],
                   expected: Optional[Dict[str, str]] = None) -> List[dict]:
        """Data infos for ``ids`` whose image exists in ``paths``.

        The others are listed in ``metainfo['missing_images']``.
        """
        missing = [i for i in ids if i not in paths]
        self.num_missing = report_missing(missing, 'listed images do not exist', self.on_missing,
                                          type(self).__name__)
        self._metainfo[MISSING_IMAGES_KEY] = [
            missing_image_record(i, (expected or {}).get(i)) for i in missing]
        data_list = []
        for img_id in ids:
            if img_id not in paths:
                continue
            info = dict(img_path=paths[img_id], img_id=img_id)
            if labels is not None:
                info['gt_label'] = sorted(labels[img_id])
            data_list.append(info)
        return data_list


@DATASETS.register_module()
class MultiLabelImageFolder(_MultiLabelDataset):
    """Images found (recursively) in a folder, with optional labels.

    Without ``ann_file`` every image is used, unlabelled; with it, the label
    file defines the image set. ``id_list`` restricts either further.

    Args:
        ann_file (str): Optional label file. Defaults to ''.
        id_list (str): Optional file of image ids to keep. Defaults to ''.
        metainfo (dict): Must give ``classes`` (names, or lists of synonyms).
        data_root (str): Root joined to relative ``ann_file``, ``id_list`` and
            ``data_prefix['img_path']``. Defaults to ''.
        data_prefix (dict): ``img_path`` is the image folder.
        extensions (Sequence[str]): Image file extensions to pick up.
        label_index_map (str | Sequence[int], optional): Translate label
            indices of the file (see :func:`read_label_file`).
        on_missing (str): Labelled or listed ids without an image:
            ``'skip'`` or ``'raise'``. Defaults to ``'skip'``.
        **kwargs: Other :class:`mmengine.dataset.BaseDataset` arguments
            (``pipeline``, ``test_mode``, ``indices``...).
    """

    def __init__(self,
                 ann_file: str = '',
                 id_list: str = '',
                 metainfo: Optional[dict] = None,
                 data_root: str = '',
                 data_prefix: dict = dict(img_path=''),
                 extensions: Sequence[str] = IMG_EXTENSIONS,
                 label_index_map: IndexMap = None,
                 on_missing: str = 'skip',
                 **kwargs) -> None:
        self.id_list = join_root(data_root, id_list)
        self.extensions = tuple(extensions)
        super().__init__(on_missing=on_missing, label_index_map=label_index_map, ann_file=ann_file,
                         metainfo=metainfo, data_root=data_root, data_prefix=data_prefix, **kwargs)

    def load_data_list(self) -> List[dict]:
        """Scan the folder and attach labels."""
        paths = scan_images(self.data_prefix['img_path'], self.extensions)
        labels = None
        if self.ann_file:
            labels = self._read_labels()
            ids = list(labels)
            unlisted = len(set(paths) - set(labels))
            if unlisted:
                print_log(f'{type(self).__name__}: {unlisted} images in the folder are not in '
                          f'{self.ann_file!r} and are not used', logger='current')
        else:
            ids = list(paths)
        if self.id_list:
            keep = read_id_list(self.id_list)
            if labels is not None:
                unlabelled = [i for i in keep if i not in labels]
                if unlabelled:
                    raise ValueError(
                        f'{len(unlabelled)} ids of {self.id_list!r} have no line in the label '
                        f'file {self.ann_file!r}, e.g. {unlabelled[:5]}; add them (an id alone '
                        'on a line means "no labels") or remove them from the id list')
            ids = keep
        return self._data_list(ids, paths, labels)


@DATASETS.register_module()
class MultiLabelListDataset(_MultiLabelDataset):
    """Images named by a label file: ``<img_dir>/<image_id><img_suffix>``.

    Args:
        ann_file (str): The label file (joined to ``data_root`` if relative).
        metainfo (dict, optional): ``classes``; subclasses give defaults.
        data_root (str): Root of ``ann_file`` and ``data_prefix``.
        data_prefix (dict): ``img_path`` is the image folder.
        img_suffix (str | Sequence[str]): File extension appended to each
            id, or a list of them tried in order (``['.jpg', '.png']``).
            Defaults to '.jpg'.
        label_index_map (str | Sequence[int], optional): Translate label
            indices of the file (see :func:`read_label_file`).
        on_missing (str): Ids without an image: ``'skip'`` or ``'raise'``.
        **kwargs: Other :class:`mmengine.dataset.BaseDataset` arguments.
    """

    def __init__(self,
                 ann_file: str,
                 metainfo: Optional[dict] = None,
                 data_root: str = '',
                 data_prefix: dict = dict(img_path=''),
                 img_suffix: Union[str, Sequence[str]] = '.jpg',
                 label_index_map: IndexMap = None,
                 on_missing: str = 'skip',
                 **kwargs) -> None:
        if not ann_file:
            raise ValueError(f'{type(self).__name__} needs ann_file, the label file that lists '
                             'the images (use MultiLabelImageFolder to scan a folder instead)')
        self.img_suffix = image_suffixes(img_suffix)
        super().__init__(on_missing=on_missing, label_index_map=label_index_map, ann_file=ann_file,
                         metainfo=metainfo, data_root=data_root, data_prefix=data_prefix, **kwargs)

    def load_data_list(self) -> List[dict]:
        """Read the label file and locate each image."""
        labels = self._read_labels()
        img_dir = self.data_prefix['img_path']
        candidates = {i: locate_image(img_dir, i, self.img_suffix) for i in labels}
        paths = {i: p for i, p in candidates.items() if osp.isfile(p)}
        return self._data_list(list(labels), paths, labels, expected=candidates)


@DATASETS.register_module()
class VOCMultiLabelDataset(MultiLabelListDataset):
    """PASCAL VOC (2007 or 2012) multi-label classification from a list file.

    Defaults: the 20 VOC classes, images in ``<data_root>/JPEGImages``.
    """
    METAINFO = dict(classes=VOC_CLASSES)

    def __init__(self, ann_file: str, data_prefix: dict = dict(img_path='JPEGImages'),
                 **kwargs) -> None:
        super().__init__(ann_file=ann_file, data_prefix=data_prefix, **kwargs)


@DATASETS.register_module()
class COCOStuffMultiLabelDataset(MultiLabelListDataset):
    """COCO-Stuff multi-label classification over TagCLIP's 171 classes.

    TagCLIP's list stores 182-space ids, mapped here to the 171 classes;
    pass ``label_index_map=None`` for a file already in 171-space.
    """
    METAINFO = dict(classes=COCOSTUFF_171_CLASSES)

    def __init__(self, ann_file: str, label_index_map: IndexMap = 'cocostuff182_to_171',
                 **kwargs) -> None:
        super().__init__(ann_file=ann_file, label_index_map=label_index_map, **kwargs)


@DATASETS.register_module()
class COCOMultiLabelDataset(_MultiLabelDataset):
    """COCO multi-label classification from an instances json.

    Labels are the annotations' categories in ascending category-id order;
    images without annotations are left out, as in TagCLIP's lists.

    Args:
        ann_file (str): ``instances_*.json`` (joined to ``data_root`` if
            relative).
        data_prefix (dict): ``img_path`` is the image folder (e.g.
            ``'val2014'``); the json's ``file_name`` is joined to it.
        include_crowd (bool): Count ``iscrowd`` annotations as labels.
            Defaults to True.
        keep_empty (bool): Keep images without annotations (no labels).
            Defaults to False.
        on_missing (str): Images in the json without a file: ``'skip'`` or
            ``'raise'``.
        **kwargs: ``metainfo``, ``data_root``, ``pipeline``... as for
            :class:`mmengine.dataset.BaseDataset`. A custom COCO-format json
            needs ``metainfo=dict(classes=...)`` with one name per category.
    """
    METAINFO = dict(classes=COCO_CLASSES)

    def __init__(self,
                 ann_file: str,
                 data_prefix: dict = dict(img_path=''),
                 include_crowd: bool = True,
                 keep_empty: bool = False,
                 on_missing: str = 'skip',
                 **kwargs) -> None:
        self.include_crowd = include_crowd
        self.keep_empty = keep_empty
        super().__init__(on_missing=on_missing, ann_file=ann_file, data_prefix=data_prefix,
                         **kwargs)

    def load_data_list(self) -> List[dict]:
        """Parse the json into per-image label sets."""
        with open(self.ann_file, encoding='utf-8') as f:
            coco = json.load(f)
        for key in ('images', 'annotations', 'categories'):
            if key not in coco:
                raise ValueError(f'{self.ann_file!r} is not a COCO instances json: '
                                 f'it has no {key!r} list')
        cat_ids = sorted(c['id'] for c in coco['categories'])
        if len(cat_ids) != self.num_classes:
            raise ValueError(
                f'{self.ann_file!r} has {len(cat_ids)} categories but the dataset has '
                f'{self.num_classes} classes; pass metainfo=dict(classes=...) with one name per '
                'category, in ascending category-id order')
        cat_index = {cat_id: i for i, cat_id in enumerate(cat_ids)}
        labels: Dict[int, set] = {}
        for ann in coco['annotations']:
            if not self.include_crowd and ann.get('iscrowd', 0):
                continue
            if ann['category_id'] not in cat_index:
                raise ValueError(f'{self.ann_file!r}: annotation {ann.get("id")} has '
                                 f'category_id {ann["category_id"]}, which is not in its '
                                 'categories list')
            labels.setdefault(ann['image_id'], set()).add(cat_index[ann['category_id']])

        img_dir = self.data_prefix['img_path']
        images = sorted(coco['images'], key=lambda im: im['id'])
        ids, paths, label_of, expected = [], {}, {}, {}
        for image in images:
            if image['id'] not in labels and not self.keep_empty:
                continue
            img_id = osp.splitext(osp.basename(image['file_name']))[0]
            ids.append(img_id)
            label_of[img_id] = sorted(labels.get(image['id'], ()))
            path = expected[img_id] = osp.join(img_dir, image['file_name'])
            if osp.isfile(path):
                paths[img_id] = path
        return self._data_list(ids, paths, label_of, expected)

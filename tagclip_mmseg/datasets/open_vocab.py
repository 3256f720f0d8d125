"""The two benchmarks of the open-vocabulary protocol that mmseg lacks.

The training-free open-vocabulary segmentation protocol (SCLIP, NACLIP,
ProxyCLIP, ...; docs/open_vocab.md) evaluates eight benchmarks through mmseg
datasets. Six are mmseg's own; these two are defined the way those projects
define them, so their data folders work unchanged:

* **VOC20**: PASCAL VOC 2012 val without the background class. The masks are
  VOC's own ``SegmentationClass`` PNGs read with ``reduce_zero_label=True``:
  background (0) and the 255 border are ignored, class ``k`` becomes ``k-1``.
* **COCO-Object**: COCO 2017 val with background + the 80 thing classes,
  masks ``<id>_instanceTrainIds.png`` (0 background, 1..80, 255 ignored) as
  the protocol's converter writes them under
  ``data/coco_stuff164k/annotations/val2017``.
"""
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS
from .categories import COCO_CLASSES, VOC_CLASSES, voc_palette

__all__ = ['PascalVOC20Dataset', 'COCOObjectDataset']


@DATASETS.register_module()
class PascalVOC20Dataset(BaseSegDataset):
    """PASCAL VOC 2012 without background (20 classes, ``reduce_zero_label``).

    Args:
        ann_file (str): Split list, e.g. ``ImageSets/Segmentation/val.txt``.
        **kwargs: :class:`BaseSegDataset` arguments.
    """
    METAINFO = dict(classes=VOC_CLASSES, palette=voc_palette(21)[1:])

    def __init__(self, ann_file: str = '', img_suffix: str = '.jpg',
                 seg_map_suffix: str = '.png', reduce_zero_label: bool = True,
                 **kwargs) -> None:
        super().__init__(ann_file=ann_file, img_suffix=img_suffix,
                         seg_map_suffix=seg_map_suffix, reduce_zero_label=reduce_zero_label,
                         **kwargs)


@DATASETS.register_module()
class COCOObjectDataset(BaseSegDataset):
    """COCO-Object: background + 80 COCO things, ``*_instanceTrainIds.png`` masks.

    Class names are the project's COCO names (``COCO_CLASSES``, in COCO's
    category order); the metric only uses their count and order.
    """
    METAINFO = dict(classes=('background', ) + COCO_CLASSES, palette=voc_palette(81))

    def __init__(self, img_suffix: str = '.jpg',
                 seg_map_suffix: str = '_instanceTrainIds.png', **kwargs) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)

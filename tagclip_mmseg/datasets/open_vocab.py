"""VOC20 and COCO-Object, the open-vocabulary benchmarks mmseg lacks (docs/open_vocab.md)."""
from typing import List

from mmengine import fileio
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from ..utils.class_names import COCO_CLASSES, VOC_CLASSES, voc_palette

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

    A missing mask stops the listing with the converter's command.
    """
    METAINFO = dict(classes=('background', ) + COCO_CLASSES, palette=voc_palette(81))

    def __init__(self, img_suffix: str = '.jpg',
                 seg_map_suffix: str = '_instanceTrainIds.png', **kwargs) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)

    def load_data_list(self) -> List[dict]:
        """Mmseg's listing, checked for a mask per image.

        Raises:
            FileNotFoundError: When a listed image has no mask.
        """
        data_list = super().load_data_list()
        missing = [d['seg_map_path'] for d in data_list if d.get('seg_map_path')
                   and not fileio.exists(d['seg_map_path'], backend_args=self.backend_args)]
        if missing:
            root = self.data_root or 'DATA_ROOT'
            raise FileNotFoundError(
                f'{len(missing)} of the {len(data_list)} images have no COCO-Object mask, e.g. '
                f"{missing[0]}; build the masks from COCO-Stuff's stuffthingmaps with "
                f'`python tools/dataset_converters/coco_object.py {root}` (README "Data", '
                'docs/open_vocab.md "COCO-Object masks")')
        return data_list

"""Datasets, transforms and samplers (registered in mmseg's registries)."""
from .categories import (COCO_CATEGORY_IDS, COCO_CLASSES, COCOSTUFF_27_CLASSES,
                         COCOSTUFF_171_CLASSES, COCOSTUFF_171_TO_27, COCOSTUFF_182,
                         COCOSTUFF_182_TO_27, COCOSTUFF_182_TO_171, COCOSTUFF_182_TO_OBJECT,
                         COCOSTUFF_UNUSED_IDS,
                         VOC_CLASSES, voc_palette)
from .image_io import ImageLoadError, load_rgb_image, read_image_size
from .label_files import (LabelFileError, format_label_line, read_id_list, read_label_file,
                          write_label_file)
from .label_maps import LABEL_INDEX_MAPS, LabelMap, apply_label_lut, label_lut, resolve_index_map
from .multilabel import (COCOMultiLabelDataset, COCOStuffMultiLabelDataset, MultiLabelImageFolder,
                         MultiLabelListDataset, VOCMultiLabelDataset)
from .open_vocab import COCOObjectDataset, PascalVOC20Dataset
from .optional_annotations import LoadOptionalAnnotations
from .samplers import GridBatchSampler, GridGroupedSampler, ImageGrids
from .segmentation import (COCOObjectTaggedSegDataset, COCOStuff27TaggedSegDataset,
                           TaggedSegDataset, VOCTaggedSegDataset)
from .transforms import LoadImageRobust, ResizeToPatchMultiple, patch_grid

__all__ = [
    'VOC_CLASSES', 'COCO_CLASSES', 'COCO_CATEGORY_IDS', 'COCOSTUFF_182', 'COCOSTUFF_UNUSED_IDS',
    'COCOSTUFF_171_CLASSES', 'COCOSTUFF_27_CLASSES', 'COCOSTUFF_182_TO_171',
    'COCOSTUFF_182_TO_27', 'COCOSTUFF_171_TO_27', 'COCOSTUFF_182_TO_OBJECT', 'voc_palette',
    'LABEL_INDEX_MAPS',
    'resolve_index_map', 'LabelMap', 'label_lut', 'apply_label_lut', 'ImageLoadError',
    'load_rgb_image', 'read_image_size', 'LabelFileError',
    'read_label_file', 'read_id_list', 'format_label_line', 'write_label_file',
    'MultiLabelImageFolder', 'MultiLabelListDataset', 'VOCMultiLabelDataset',
    'COCOStuffMultiLabelDataset', 'COCOMultiLabelDataset', 'TaggedSegDataset',
    'VOCTaggedSegDataset', 'COCOObjectTaggedSegDataset', 'COCOStuff27TaggedSegDataset',
    'LoadImageRobust', 'ResizeToPatchMultiple', 'patch_grid', 'ImageGrids', 'GridGroupedSampler',
    'GridBatchSampler', 'LoadOptionalAnnotations', 'PascalVOC20Dataset', 'COCOObjectDataset'
]

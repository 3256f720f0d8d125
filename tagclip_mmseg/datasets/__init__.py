"""Datasets, transforms and samplers (registered in mmseg's registries)."""
from .image_io import ImageLoadError, load_rgb_image, read_image_size
from .label_files import (LabelFileError, format_label_line, read_id_list, read_label_file,
                          write_label_file)
from .multilabel import (COCOMultiLabelDataset, COCOStuffMultiLabelDataset, MultiLabelImageFolder,
                         MultiLabelListDataset, VOCMultiLabelDataset)
from .open_vocab import COCOObjectDataset, PascalVOC20Dataset
from .optional_annotations import LoadOptionalAnnotations
from .samplers import GridBatchSampler, GridGroupedSampler, ImageGrids
from .segmentation import (COCOObjectTaggedSegDataset, COCOStuff27TaggedSegDataset,
                           TaggedSegDataset, VOCTaggedSegDataset)
from .transforms import LoadImageRobust, ResizeToPatchMultiple, image_grid

__all__ = [
    'ImageLoadError', 'load_rgb_image', 'read_image_size', 'LabelFileError',
    'read_label_file', 'read_id_list', 'format_label_line', 'write_label_file',
    'MultiLabelImageFolder', 'MultiLabelListDataset', 'VOCMultiLabelDataset',
    'COCOStuffMultiLabelDataset', 'COCOMultiLabelDataset', 'TaggedSegDataset',
    'VOCTaggedSegDataset', 'COCOObjectTaggedSegDataset', 'COCOStuff27TaggedSegDataset',
    'LoadImageRobust', 'ResizeToPatchMultiple', 'image_grid', 'ImageGrids', 'GridGroupedSampler',
    'GridBatchSampler', 'LoadOptionalAnnotations', 'PascalVOC20Dataset', 'COCOObjectDataset'
]

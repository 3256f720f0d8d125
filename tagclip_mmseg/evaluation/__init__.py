"""Metrics and output writers; importing registers them in mmseg's registries."""
from .multilabel_metrics import (TaggingMetric, average_precision, precision_recall_f1,
                                 relative_threshold_mask)
from .output_writer import OutputWriter, writers_of
from .pseudo_label_writer import PseudoLabelWriter, encode_label_png, encode_npz
from .seg_metrics import CLSSegIoUMetric, class_histograms, iou_from_histograms
from .summary import format_duration, format_summary
from .tag_writer import TagFileWriter

__all__ = [
    'TaggingMetric', 'average_precision', 'precision_recall_f1', 'relative_threshold_mask',
    'OutputWriter', 'writers_of', 'PseudoLabelWriter', 'encode_label_png', 'encode_npz',
    'CLSSegIoUMetric',
    'class_histograms', 'iou_from_histograms', 'format_duration', 'format_summary',
    'TagFileWriter'
]

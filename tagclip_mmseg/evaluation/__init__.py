"""Metrics and output writers; importing registers them in mmseg's registries."""
from .multilabel_metrics import (TaggingMetric, average_precision, precision_recall_f1,
                                 relative_threshold_mask)
from .pseudo_label_writer import PseudoLabelWriter, encode_label_png, encode_npz
from .resume import (SkipExisting, SkipTagged, read_cam_file, read_label_png,
                     remove_stale_temp_files)
from .seg_metrics import CLSSegIoUMetric, class_histograms, iou_from_histograms
from .summary import format_duration, format_summary
from .tag_journal import TagJournal, decode_scores, encode_scores, read_journals
from .tag_writer import TagFileWriter

__all__ = [
    'TaggingMetric', 'average_precision', 'precision_recall_f1', 'relative_threshold_mask',
    'PseudoLabelWriter', 'encode_label_png', 'encode_npz', 'SkipExisting', 'SkipTagged',
    'read_cam_file', 'read_label_png', 'remove_stale_temp_files', 'CLSSegIoUMetric',
    'class_histograms', 'iou_from_histograms',
    'format_duration', 'format_summary', 'TagJournal', 'decode_scores', 'encode_scores',
    'read_journals', 'TagFileWriter'
]

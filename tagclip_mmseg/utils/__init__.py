from .checks import NonFiniteError, check_finite, check_range
from .class_names import (COCO_CATEGORY_IDS, COCO_CLASSES, COCOSTUFF_27_CLASSES,
                          COCOSTUFF_171_CLASSES, COCOSTUFF_171_TO_27, COCOSTUFF_182,
                          COCOSTUFF_182_TO_27, COCOSTUFF_182_TO_171, COCOSTUFF_182_TO_OBJECT,
                          COCOSTUFF_UNUSED_IDS, VOC_CLASSES, ClassName, class_key, voc_palette)
from .cli import (add_quirks_args, add_runner_args, add_vocabulary_args, apply_vocabulary_args,
                  default_work_dir, load_config, parse_runner_args, quirks_from_args,
                  vocabulary_args_to_argv)
from .config import (iter_dicts, set_clip_checkpoint, set_config_vocabulary, set_in_dicts_of_type,
                     set_open_vocab_protocol, type_accepts)
from .dist import init_cpu_distributed, shutdown_distributed
from .hashing import cache_root, file_sha256, file_stamp
from .init_args import RecordsInitArgs, init_args, init_parameters
from .io import atomic_open, atomic_write_bytes, atomic_write_text, ensure_writable_dir
from .label_maps import LABEL_INDEX_MAPS, LabelMap, apply_label_lut, label_lut, resolve_index_map
from .name_files import (NameFile, NameFileError, read_background_words, read_class_names,
                         read_name_file)
from .normalize import compute_dtype, minmax_normalize
from .paths import UnsafePathError, safe_join
from .quirks import QUIRK_PRESETS, Quirks, QuirksLike, resolve_quirks
from .thresholds import relative_threshold, relative_threshold_mask
from .token_grid import check_patch_args, group_indices, patch_grid
from .torch_compat import (autocast_supports, check_mmcv_ops, check_torch_version,
                           has_named_safe_globals, is_autocast_enabled, load_weights_only)
from .unpickling import error_sentence, refused_globals, unreadable_reason

__all__ = [
    'add_runner_args', 'parse_runner_args', 'load_config', 'default_work_dir', 'atomic_open',
    'atomic_write_bytes', 'atomic_write_text', 'ensure_writable_dir', 'iter_dicts',
    'set_clip_checkpoint', 'set_in_dicts_of_type', 'set_open_vocab_protocol', 'type_accepts',
    'init_cpu_distributed', 'shutdown_distributed', 'cache_root', 'file_sha256', 'file_stamp',
    'RecordsInitArgs',
    'init_args', 'init_parameters', 'UnsafePathError', 'safe_join', 'error_sentence',
    'refused_globals', 'unreadable_reason', 'Quirks', 'QuirksLike', 'QUIRK_PRESETS',
    'resolve_quirks', 'add_quirks_args', 'quirks_from_args',
    'check_range', 'check_finite', 'NonFiniteError',
    'add_vocabulary_args', 'apply_vocabulary_args', 'vocabulary_args_to_argv',
    'set_config_vocabulary', 'NameFile', 'NameFileError', 'read_name_file', 'read_class_names',
    'read_background_words',
    'autocast_supports', 'check_mmcv_ops', 'check_torch_version', 'has_named_safe_globals',
    'is_autocast_enabled', 'load_weights_only', 'VOC_CLASSES', 'COCO_CLASSES', 'COCO_CATEGORY_IDS',
    'COCOSTUFF_182', 'COCOSTUFF_UNUSED_IDS', 'COCOSTUFF_171_CLASSES', 'COCOSTUFF_27_CLASSES',
    'COCOSTUFF_182_TO_171', 'COCOSTUFF_182_TO_27', 'COCOSTUFF_171_TO_27',
    'COCOSTUFF_182_TO_OBJECT', 'voc_palette', 'ClassName', 'class_key', 'LABEL_INDEX_MAPS',
    'resolve_index_map', 'LabelMap', 'label_lut', 'apply_label_lut', 'compute_dtype',
    'minmax_normalize', 'relative_threshold', 'relative_threshold_mask', 'check_patch_args',
    'group_indices', 'patch_grid'
]

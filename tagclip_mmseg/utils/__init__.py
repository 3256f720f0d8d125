from .checks import NonFiniteError, check_finite, check_range
from .cli import (add_quirks_args, add_runner_args, default_work_dir, load_config,
                  parse_runner_args, quirks_from_args)
from .config import (iter_dicts, set_clip_checkpoint, set_in_dicts_of_type,
                     set_open_vocab_protocol, type_accepts)
from .dist import init_cpu_distributed
from .io import atomic_open, atomic_write_bytes, atomic_write_text, ensure_writable_dir
from .quirks import QUIRK_PRESETS, Quirks, QuirksLike, resolve_legacy_quirks, resolve_quirks
from .unpickling import error_sentence, refused_global

__all__ = [
    'add_runner_args', 'parse_runner_args', 'load_config', 'default_work_dir', 'atomic_open', 'atomic_write_bytes', 'atomic_write_text', 'ensure_writable_dir', 'iter_dicts',
    'set_clip_checkpoint', 'set_in_dicts_of_type', 'set_open_vocab_protocol', 'type_accepts', 'init_cpu_distributed',
    'error_sentence', 'refused_global', 'Quirks', 'QuirksLike', 'QUIRK_PRESETS', 'resolve_quirks',
    'resolve_legacy_quirks', 'add_quirks_args', 'quirks_from_args', 'check_range', 'check_finite',
    'NonFiniteError'
]

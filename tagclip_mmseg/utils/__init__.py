from .cli import add_runner_args, default_work_dir, load_config, parse_runner_args
from .config import iter_dicts, set_clip_checkpoint, set_in_dicts_of_type, type_accepts
from .dist import init_cpu_distributed
from .io import atomic_open, atomic_write_bytes, atomic_write_text, ensure_writable_dir
from .unpickling import error_sentence, refused_global

__all__ = [
    'add_runner_args', 'parse_runner_args', 'load_config', 'default_work_dir', 'atomic_open', 'atomic_write_bytes', 'atomic_write_text', 'ensure_writable_dir', 'iter_dicts',
    'set_clip_checkpoint', 'set_in_dicts_of_type', 'type_accepts', 'init_cpu_distributed',
    'error_sentence', 'refused_global'
]

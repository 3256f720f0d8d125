from .io import atomic_open, atomic_write_bytes, atomic_write_text, ensure_writable_dir

__all__ = ['atomic_open', 'atomic_write_bytes', 'atomic_write_text', 'ensure_writable_dir']

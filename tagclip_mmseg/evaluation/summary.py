"""The one-line run summary printed by the writers and the command-line tools."""
from typing import Mapping

__all__ = ['format_summary', 'format_duration']


def format_duration(seconds: float) -> str:
    """``3725.4`` -> ``'1h02m05s'``; ``12.34`` -> ``'12.3s'``."""
    if seconds < 60:
        return f'{seconds:.1f}s'
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f'{hours}h{minutes:02d}m{secs:02d}s' if hours else f'{minutes}m{secs:02d}s'


def format_summary(counts: Mapping[str, int], elapsed_s: float, unit: str = 'images') -> str:
    """Summarise a finished run in one line.

    Args:
        counts: Outcome name -> number of images, in display order; the
            total is their sum.
        elapsed_s: Wall time of the run in seconds.
        unit: What was counted.

    Returns:
        E.g. ``'13 images: 10 written, 2 skipped, 1 failed in 4.2s (3.10 images/s)'``
        (the rate counts skipped images too).
    """
    total = sum(int(v) for v in counts.values())
    parts = ', '.join(f'{int(v)} {k}' for k, v in counts.items())
    rate = f'{total / elapsed_s:.2f}' if elapsed_s > 0 else 'n/a'
    return f'{total} {unit}: {parts} in {format_duration(elapsed_s)} ({rate} {unit}/s)'

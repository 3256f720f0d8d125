"""Progress of long training-free runs: images done, images/s, ETA, summary.

Counts are per-rank estimates scaled by the world size; the writers'
summaries hold the exact totals.
"""
import time
from typing import Optional

from mmengine.dist import get_world_size
from mmengine.hooks import Hook
from mmseg.registry import HOOKS

from ..evaluation.summary import format_duration

__all__ = ['RunProgressHook']


@HOOKS.register_module()
class RunProgressHook(Hook):
    """Log ``done/total images, images/s, ETA`` every ``interval_s`` seconds.

    Args:
        interval_s (float): Seconds between progress lines.
    """

    priority = 'LOW'

    def __init__(self, interval_s: float = 30.0) -> None:
        self.interval_s = float(interval_s)
        self._start = 0.0
        self._last = 0.0
        self._done = 0
        self._total: Optional[int] = None

    def before_test(self, runner) -> None:
        """Start the clock and read the dataset size."""
        self._start = self._last = time.time()
        self._done = 0
        try:
            self._total = len(runner.test_dataloader.dataset)
        except TypeError:
            self._total = None

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        """Count the batch; log a progress line every ``interval_s`` seconds."""
        n = len(outputs) if outputs is not None else 1
        self._done += n * get_world_size()
        now = time.time()
        if now - self._last >= self.interval_s:
            self._last = now
            runner.logger.info(self.progress_line(now))

    def progress_line(self, now: float) -> str:
        """Images done, rate and ETA at time ``now``."""
        elapsed = max(now - self._start, 1e-9)
        rate = self._done / elapsed
        done = min(self._done, self._total) if self._total else self._done
        if self._total:
            eta = (self._total - done) / rate if rate > 0 else float('inf')
            eta_s = format_duration(eta) if eta != float('inf') else '?'
            return (f'progress: {done}/{self._total} images ({100 * done / self._total:.1f}%), '
                    f'{rate:.2f} images/s, ETA {eta_s}')
        return f'progress: {done} images, {rate:.2f} images/s'

    def after_test(self, runner) -> None:
        """Log the total count, time and rate."""
        elapsed = time.time() - self._start
        total = self._total if self._total is not None else self._done
        rate = total / elapsed if elapsed > 0 else 0.0
        runner.logger.info(f'done: {total} images in {format_duration(elapsed)} '
                           f'({rate:.2f} images/s)')

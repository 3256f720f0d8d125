"""The shared timer: warm-up, round-robin repeats, peak memory and printing."""
import argparse
import contextlib
import gc
import re
import resource
import statistics
import sys
import time
from typing import Callable, ContextManager, Dict, List, NamedTuple, Optional

import torch

from .targets import TARGETS, meets

__all__ = ['GIB', 'MemoryMeter', 'Timing', 'Bench']

GIB = 1024**3


class MemoryMeter:
    """Peak memory of a code section, on the host or the accelerator.

    On a GPU the ``torch.cuda`` allocator statistics; on Linux the resident
    set's high-water mark, reset through ``/proc/self/clear_refs``; elsewhere
    ``getrusage``'s peak of the whole process, still an upper bound.

    Args:
        device (torch.device): The device whose memory is measured.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == 'cuda'
        self.device = device
        self.resettable = self.cuda or self._can_reset_host()
        self.what = 'device peak' if self.cuda else 'host peak RSS'
        if not self.resettable:
            self.what += ' (process lifetime)'

    @staticmethod
    def _can_reset_host() -> bool:
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            return MemoryMeter._status_kib('VmHWM') is not None
        except OSError:
            return False

    @staticmethod
    def _status_kib(field: str) -> Optional[int]:
        try:
            with open('/proc/self/status') as f:
                m = re.search(rf'^{field}:\s+(\d+) kB', f.read(), re.M)
        except OSError:
            return None
        return int(m.group(1)) if m else None

    def reset(self) -> None:
        """Start a new peak."""
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')

    def current(self) -> int:
        """Bytes in use now."""
        if self.cuda:
            return torch.cuda.memory_allocated(self.device)
        kib = self._status_kib('VmRSS')
        return self.peak() if kib is None else kib * 1024

    def peak(self) -> int:
        """Peak bytes since the last :meth:`reset`."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        if self.resettable:
            return self._status_kib('VmHWM') * 1024
        # ru_maxrss is KiB on Linux, bytes on macOS.
        scale = 1 if sys.platform == 'darwin' else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class Timing(NamedTuple):
    """One function's summary seconds, peak bytes, fastest and slowest run."""
    seconds: float
    peak: int
    low: float
    high: float


class Bench:
    """Device, memory meter, repeats and the printing shared by every part.

    Args:
        args (argparse.Namespace): The parsed command line (``device``,
            ``autocast``, ``warmup``, ``repeats``, ``statistic``).
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.meter = MemoryMeter(self.device)

    def autocast(self) -> ContextManager:
        """``torch.autocast`` when ``--autocast`` is given, else a no-op."""
        from tagclip_mmseg.models.clip import resolve_dtype
        if not self.args.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type,
                              dtype=resolve_dtype(self.args.autocast))

    def sync(self) -> None:
        """Wait for the device's queued work."""
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def measure(self, fns: Dict[str, Callable[[], object]]) -> Dict[str, Timing]:
        """Seconds (``--statistic`` of the runs) and peak memory of each function.

        The functions run round-robin (A, B, C, A, B, C, ...) after
        ``--warmup`` untimed rounds, so that a drifting machine load slows all
        of them alike and their ratios stay meaningful.

        Args:
            fns (dict): Name -> function to time.

        Returns:
            dict: Name -> :class:`Timing`.
        """
        for _ in range(self.args.warmup):
            for fn in fns.values():
                with self.autocast():
                    fn()
        self.sync()
        times: Dict[str, List[float]] = {k: [] for k in fns}
        peaks = dict.fromkeys(fns, 0)
        for _ in range(self.args.repeats):
            for key, fn in fns.items():
                self.meter.reset()
                start = time.perf_counter()
                with self.autocast():
                    fn()
                self.sync()
                times[key].append(time.perf_counter() - start)
                peaks[key] = max(peaks[key], self.meter.peak())
        summary = statistics.median if self.args.statistic == 'median' else min
        return {k: Timing(summary(t), peaks[k], min(t), max(t)) for k, t in times.items()}

    def timing(self, label: str, t: Timing, images: int, detail: str = '') -> None:
        """Print a throughput figure; ``t`` is for a batch of ``images``."""
        spread = f'runs {t.low / images:.3f}-{t.high / images:.3f} s/img'
        print(f'{label:<52} {images / t.seconds:8.3f} img/s {t.seconds / images:8.3f} s/img  '
              f'{self.meter.what} {t.peak / GIB:5.2f} GiB  {spread}'
              f'{("; " + detail) if detail else ""}', flush=True)

    def ratio(self, label: str, value: float, target: Optional[str] = None, detail: str = '',
              unit: str = 'x') -> None:
        """Print a derived figure, with its PASS/MISS when it has a target.

        Args:
            label (str): The figure's name.
            value (float): The figure.
            target (str, optional): A row of :data:`~.targets.TARGETS`.
            detail (str): Printed in parentheses after the figure.
            unit (str): The figure's unit.
        """
        line = f'{label:<52} {value:8.3f} {unit:<3}'
        if target is not None:
            bound = TARGETS[target]
            line += (f'  target {bound.op} {bound.value:g} {unit}  '
                     f'{"PASS" if meets(target, value) else "MISS"}')
        if detail:
            line += f'  ({detail})'
        print(line.rstrip(), flush=True)

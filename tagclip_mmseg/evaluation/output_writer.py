"""Base of the metrics that write a run's files: run lock, timer, missing images."""
import time
from typing import List, Optional, Type

from mmengine.dist import is_main_process
from mmengine.evaluator import BaseMetric

from ..records import missing_images
from ..utils.io import ensure_writable_dir
from ..utils.run_lock import RunLock

__all__ = ['OutputWriter', 'writers_of']


class OutputWriter(BaseMetric):
    """A metric that writes files; the constructor touches nothing on disk.

    ``WriterRunHook`` calls :meth:`begin_run` in ``before_test`` and
    :meth:`end_run` in ``after_test`` or when the run fails. Why writers are
    metrics, and the lock's life: docs/resume.md, "Output writers".

    Args:
        lock_target: The file or folder whose ``RunLock`` guards the output.
        id_folder: The folder every image id must stay inside.
        collect_device: ``'cpu'`` or ``'gpu'``, for gathering across ranks.
        prefix: Key prefix of the returned counts.
    """

    def __init__(self, lock_target: str, id_folder: str, collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.lock_target = lock_target
        self.id_folder = id_folder
        self._lock: Optional[RunLock] = None
        self._start: Optional[float] = None
        self._folders_ready = False

    def output_folders(self) -> List[str]:
        """The folders the writer writes into."""
        raise NotImplementedError

    def remove_temp_files(self) -> None:
        """Remove the temporaries a killed run left (rank 0, holding the lock)."""

    def _prepare_folders(self) -> None:
        """Create the output folders, or raise ``PermissionError`` before any work."""
        if not self._folders_ready:
            for folder in sorted(set(self.output_folders())):
                ensure_writable_dir(folder)
            self._folders_ready = True

    def begin_run(self) -> None:
        """Check the folders; on rank 0 take the lock and remove stale temporaries.

        Raises:
            PermissionError: When an output folder cannot be written.
            OutputInUseError: When a live run holds the lock.
        """
        self._prepare_folders()
        if self._lock is None and is_main_process():
            lock = RunLock(self.lock_target)
            lock.acquire()
            self._lock = lock
            self.remove_temp_files()

    def end_run(self) -> None:
        """Release the lock (a no-op when it is not held)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def start_batch(self) -> None:
        """On the first batch: prepare the folders, start the timer, check the ids."""
        if self._start is None:
            self._prepare_folders()
            self._start = time.perf_counter()
            missing_images(self.dataset_meta, self.id_folder)

    def stop_timer(self) -> float:
        """Seconds since the first batch (0 when there was none); resets the timer."""
        elapsed = time.perf_counter() - self._start if self._start is not None else 0.0
        self._start = None
        return elapsed

    def left_out(self) -> List[dict]:
        """The images the dataset listed but left out (``img_id``, ``img_path``, ``reason``)."""
        return missing_images(self.dataset_meta, self.id_folder)


def writers_of(runner, kind: Type[OutputWriter] = OutputWriter) -> List[OutputWriter]:
    """The metrics of ``runner.test_evaluator`` that are ``kind`` writers, in order."""
    return [m for m in runner.test_evaluator.metrics if isinstance(m, kind)]

"""Collecting masks whose dense CRF runs in worker processes, in order.

With ``crf=dict(workers=N)`` the pseudo-labeler's forward submits each
image's CRF to a process pool and leaves a
:class:`~tagclip_mmseg.models.pseudo_labelers.PendingLabel` on the sample. A metric
that reads ``pred_sem_seg`` must not block on it in ``process`` (the model
would wait for the CRF, and nothing would overlap), nor lose it. This mixin
queues the samples, handles them in arrival order as their labels become
ready, blocks only when too many are outstanding (bounded memory, and the
model slows to the CRF's pace), and collects the rest before the metric's
results are gathered at the end of the run, when the CRF pools are stopped.
Arrival order is kept so that mmengine's gather still drops exactly the
samples the distributed sampler padded.
"""
from collections import deque
from typing import Deque, Optional, Sequence

import torch

from ..models.pseudo_labelers.crf import PENDING_LABEL_KEY, shutdown_crf_pools
from .sample_fields import get_field, pixel_data

__all__ = ['CollectsPendingLabels', 'MAX_PENDING_IMAGES']

#: Images a metric may hold with their CRF unfinished before ``process``
#: waits (a VOC-size image with 5 classes holds about 4 MB until then).
MAX_PENDING_IMAGES = 32


class CollectsPendingLabels:
    """Mixin for a ``BaseMetric`` whose per-image work needs the final mask.

    Subclasses implement :meth:`process_sample` and call
    :meth:`init_pending` in ``__init__``; ``process`` and ``evaluate`` are
    provided.
    """

    def init_pending(self, max_pending: int = MAX_PENDING_IMAGES) -> None:
        if max_pending < 0:
            raise ValueError(f'max_pending must be >= 0, got {max_pending}')
        self._pending: Deque = deque()
        self._max_pending = max_pending

    def process_sample(self, sample, label: Optional[torch.Tensor],
                       crf_error: Optional[str]) -> None:
        """Handle one image whose mask is final.

        Args:
            sample: The data sample (dict or data element).
            label: Its ``pred_sem_seg`` tensor (the CRF's result when it was
                deferred), or ``None`` when it has none.
            crf_error: Why the deferred CRF produced no mask (its worker
                raised or died), else ``None``.
        """
        raise NotImplementedError

    def process(self, data_batch, data_samples: Sequence) -> None:
        """Queue this batch; handle every leading sample whose mask is ready."""
        self._pending.extend(data_samples)
        self._collect(wait=False)

    def evaluate(self, size: int) -> dict:
        """Collect every outstanding mask, stop the CRF pools, then gather."""
        try:
            self._collect(wait=True)
        finally:
            shutdown_crf_pools()
        return super().evaluate(size)

    def _collect(self, wait: bool) -> None:
        while self._pending:
            pending = get_field(self._pending[0], PENDING_LABEL_KEY)
            ready = pending is None or pending.done()
            if not (ready or wait or len(self._pending) > self._max_pending):
                return
            sample = self._pending.popleft()
            label, error = pixel_data(get_field(sample, 'pred_sem_seg')), None
            if pending is not None:
                try:
                    label = pending.result()
                except RuntimeError as e:
                    label, error = None, str(e)
            self.process_sample(sample, label, error)

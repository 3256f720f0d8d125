"""Predictions of samples that the model does not compute.

Two kinds of sample reach the test loop without needing the model:

* *restored*: ``precomputed`` in the metainfo (``SkipTagged`` or
  ``SkipExisting`` found the image's output of an earlier run); the output
  travels in ``pred_record`` (journaled scores and tags) or ``pred_seg_map``
  (the mask read back from disk);
* *failed*: ``load_error`` in the metainfo (``LoadImageRobust(on_error='skip')``
  could not read the image); it gets an empty prediction so that writers and
  metrics count it.

The functions here turn either into the prediction fields a computed sample
would carry (``pred_score``/``pred_label`` of an mmpretrain ``DataSample``,
``pred_sem_seg`` of a ``SegDataSample``), exactly as the models fill them.
"""
from typing import Optional

import torch
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from ..models.taggers import TagCLIP

__all__ = [
    'COMPUTE', 'RESTORE', 'FAILED', 'sample_status', 'restore_prediction', 'empty_prediction',
    'fill_prediction'
]

#: What the test loop does with a sample (see :func:`sample_status`).
COMPUTE, RESTORE, FAILED = 'compute', 'restore', 'failed'


def sample_status(sample) -> str:
    """:data:`FAILED`, :data:`RESTORE` or :data:`COMPUTE` for a data sample.

    A failed load wins over ``precomputed``: a sample has no output to restore
    when its image could not be read.
    """
    meta = getattr(sample, 'metainfo', None) or {}
    if meta.get('load_error'):
        return FAILED
    if meta.get('precomputed'):
        return RESTORE
    return COMPUTE


def _need_classes(num_classes: Optional[int]) -> int:
    if num_classes is None:
        raise ValueError('restoring a tagging sample needs the number of classes of the model')
    return int(num_classes)


def restore_prediction(sample, num_classes: Optional[int] = None) -> None:
    """Set the output an earlier run wrote for this sample.

    Args:
        sample: A ``precomputed`` sample with ``pred_seg_map`` (a
            ``SegDataSample``) or ``pred_record`` (a ``DataSample``).
        num_classes: The tagger's vocabulary size (tagging samples only).

    Raises:
        KeyError: When a tagging sample has no ``pred_record`` (not packed).
        ValueError: When the record does not fit the vocabulary, which the
            journal's fingerprint should have prevented.
    """
    if isinstance(sample, SegDataSample):
        mask = torch.as_tensor(sample.metainfo['pred_seg_map']).long()
        sample.set_data(dict(pred_sem_seg=PixelData(data=mask.view(1, *mask.shape[-2:]))))
        return
    record = sample.metainfo.get('pred_record')
    if record is None:
        raise KeyError('a precomputed sample has no pred_record: list "pred_record" (and '
                       '"precomputed") in PackInputs meta_keys after SkipTagged')
    n = _need_classes(num_classes)
    scores = torch.as_tensor(record['pred_score'])
    labels = torch.as_tensor(record['pred_label'], dtype=torch.long)
    if scores.numel() != n or bool((labels >= n).any()):
        raise ValueError(f'journaled result of {sample.metainfo.get("img_path")} has '
                         f'{scores.numel()} scores for a {n}-class vocabulary; '
                         'delete the tagging journals (<out_file>.journal.rank*.jsonl)')
    tags = torch.zeros(n, dtype=torch.bool)
    tags[labels] = True
    TagCLIP.fill_sample(sample, scores, tags)


def empty_prediction(sample, num_classes: Optional[int] = None) -> None:
    """Mark a sample whose image failed to load: no tags, or an all-ignore mask.

    A mask has the sample's ``ori_shape`` and is 255 (ignored) everywhere;
    tagging samples get zero scores for ``num_classes`` classes and no tags.
    """
    if isinstance(sample, SegDataSample):
        H, W = sample.metainfo.get('ori_shape', (1, 1))[:2]
        sample.set_data(
            dict(pred_sem_seg=PixelData(data=torch.full((1, H, W), 255, dtype=torch.long))))
        return
    n = _need_classes(num_classes)
    TagCLIP.fill_sample(sample, torch.zeros(n), torch.zeros(n, dtype=torch.bool))


def fill_prediction(sample, num_classes: Optional[int] = None) -> None:
    """Restore or empty ``sample`` according to :func:`sample_status`.

    Raises:
        ValueError: For a sample the model must compute.
    """
    status = sample_status(sample)
    if status == RESTORE:
        restore_prediction(sample, num_classes)
    elif status == FAILED:
        empty_prediction(sample, num_classes)
    else:
        raise ValueError('this sample is neither precomputed nor failed: the model computes it')

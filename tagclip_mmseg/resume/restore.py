"""Predictions of samples that the model does not compute.

A *restored* sample (``precomputed``: its output read back by ``SkipTagged`` or
``SkipExisting``) or a *failed* one (``load_error``) gets the prediction
fields a computed sample would carry, filled as the model fills them.
"""
from typing import Any

import torch
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

__all__ = [
    'COMPUTE', 'RESTORE', 'FAILED', 'sample_status', 'restore_prediction', 'empty_prediction',
    'fill_prediction'
]

#: What the test loop does with a sample (see :func:`sample_status`).
COMPUTE, RESTORE, FAILED = 'compute', 'restore', 'failed'


def sample_status(sample) -> str:
    """:data:`FAILED`, :data:`RESTORE` or :data:`COMPUTE` (a failed load wins)."""
    meta = getattr(sample, 'metainfo', None) or {}
    if meta.get('load_error'):
        return FAILED
    if meta.get('precomputed'):
        return RESTORE
    return COMPUTE


def _tagger(model: Any) -> int:
    """The vocabulary size of ``model``, checked to fill tagging samples."""
    if getattr(model, 'num_classes', None) is None or not callable(
            getattr(model, 'fill_sample', None)):
        raise ValueError(f'restoring a tagging sample needs a tagger with num_classes and '
                         f'fill_sample(sample, scores, tags), got {type(model).__name__}')
    return int(model.num_classes)


def restore_prediction(sample, model: Any = None) -> None:
    """Set the output an earlier run wrote for this sample.

    Args:
        sample: A ``precomputed`` sample with ``pred_seg_map`` (a
            ``SegDataSample``) or ``pred_record`` (a ``DataSample``).
        model: For tagging samples, the tagger: its ``num_classes`` and
            ``fill_sample(sample, scores, tags)`` are used.

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
    n = _tagger(model)
    scores = torch.as_tensor(record['pred_score'])
    labels = torch.as_tensor(record['pred_label'], dtype=torch.long)
    if scores.numel() != n or bool((labels >= n).any()):
        raise ValueError(f'journaled result of {sample.metainfo.get("img_path")} has '
                         f'{scores.numel()} scores for a {n}-class vocabulary; '
                         'delete the tagging journals (<out_file>.journal.rank*.jsonl)')
    tags = torch.zeros(n, dtype=torch.bool)
    tags[labels] = True
    model.fill_sample(sample, scores, tags)


def empty_prediction(sample, model: Any = None) -> None:
    """Mark a sample whose image failed to load: no tags, or an all-255 mask.

    Args:
        sample: The failed sample.
        model: For tagging samples, the tagger (see :func:`restore_prediction`).
    """
    if isinstance(sample, SegDataSample):
        H, W = sample.metainfo.get('ori_shape', (1, 1))[:2]
        sample.set_data(
            dict(pred_sem_seg=PixelData(data=torch.full((1, H, W), 255, dtype=torch.long))))
        return
    n = _tagger(model)
    model.fill_sample(sample, torch.zeros(n), torch.zeros(n, dtype=torch.bool))


def fill_prediction(sample, model: Any = None) -> None:
    """Restore or empty ``sample`` according to :func:`sample_status`.

    Args:
        sample: A restored or failed sample.
        model: For tagging samples, the tagger (see :func:`restore_prediction`).

    Raises:
        ValueError: For a sample the model must compute.
    """
    status = sample_status(sample)
    if status == RESTORE:
        restore_prediction(sample, model)
    elif status == FAILED:
        empty_prediction(sample, model)
    else:
        raise ValueError('this sample is neither precomputed nor failed: the model computes it')

"""mIoU of pseudo masks as TagCLIP reports it ("CLS-SEG"), beside mmseg's.

``mIoU`` averages over the classes in the ground truth, ``mIoU_mmseg`` is
mmseg's NaN-mean; per image only ``3 x C`` histograms are kept. See
docs/metrics.md, "CLS-SEG mIoU" and docs/method.md, "Segmentation evaluation".
"""
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger, print_log
from mmseg.registry import METRICS

from ..records import get_field, image_id, load_error, pixel_data
from ..utils.label_maps import LabelMap, apply_label_lut, label_lut

__all__ = ['class_histograms', 'iou_from_histograms', 'CLSSegIoUMetric']


def class_histograms(pred: torch.Tensor, gt: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Intersection, prediction and GT pixel counts per class of one image.

    Args:
        pred: Predicted labels, any shape.
        gt: GT labels, same shape; values outside ``[0, num_classes)`` are
            ignored.
        num_classes: Number of classes C.

    Returns:
        ``(3, C)`` int64 on the CPU: rows ``intersect``, ``pred_area``,
        ``gt_area`` over the valid GT pixels.
    """
    if pred.shape != gt.shape:
        raise ValueError(f'prediction shape {tuple(pred.shape)} differs from the ground truth '
                         f'{tuple(gt.shape)}; predictions must be at the original image size')
    pred, gt = pred.long().flatten(), gt.long().flatten()
    valid = (gt >= 0) & (gt < num_classes)
    pred, gt = pred[valid], gt[valid]
    pred_ok = (pred >= 0) & (pred < num_classes)
    intersect = torch.bincount(gt[pred == gt], minlength=num_classes)
    pred_area = torch.bincount(pred[pred_ok], minlength=num_classes)
    gt_area = torch.bincount(gt, minlength=num_classes)
    return torch.stack([intersect, pred_area, gt_area]).cpu()


def iou_from_histograms(hist: torch.Tensor) -> Dict[str, np.ndarray]:
    """Per-class IoU and accuracy, and the masks of the two mIoU conventions.

    Args:
        hist: ``(3, C)`` summed :func:`class_histograms`.

    Returns:
        ``iou``, ``acc`` (float64, NaN where undefined), ``in_gt`` (classes in
        the GT: the paper's mean) and ``in_union`` (mmseg's mean).
    """
    intersect, pred_area, gt_area = hist.double().numpy()
    union = pred_area + gt_area - intersect
    with np.errstate(divide='ignore', invalid='ignore'):
        iou = intersect / union
        acc = intersect / gt_area
    return dict(iou=iou, acc=acc, in_gt=gt_area > 0, in_union=union > 0)


@METRICS.register_module()
class CLSSegIoUMetric(BaseMetric):
    """mIoU of predicted masks, the paper's way and mmseg's way.

    Reads ``pred_sem_seg`` (or a resumed image's ``pred_seg_map``) and
    ``gt_sem_seg``; images with a ``load_error`` or without GT count in
    ``num_skipped``.

    Args:
        num_classes: Number of evaluated classes (after the label maps). Taken
            from ``dataset_meta['classes']`` when ``None``.
        pred_label_map: Optional map applied to predictions before scoring,
            e.g. ``'cocostuff171_to_27'`` (see
            :func:`~tagclip_mmseg.utils.label_maps.label_lut`).
        gt_label_map: Optional map applied to the GT, e.g. COCO-Stuff's
            182-id maps -> 27.
        class_names: Names for the log table; default the dataset's classes
            when their number matches.
        ignore_index: Label that uncovered label-map entries get (255).
        collect_device: ``'cpu'`` or ``'gpu'``, for gathering across ranks.
        prefix: Key prefix; none by default, like mmseg's ``IoUMetric``, so
            ``save_best='mIoU'`` works. Set one when both run together.

    Returned keys (percent): ``mIoU``, ``mIoU_mmseg``, ``mAcc``, ``aAcc``, and
    ``num_images``, ``num_skipped``.
    """
    default_prefix: Optional[str] = None

    def __init__(self,
                 num_classes: Optional[int] = None,
                 pred_label_map: Optional[LabelMap] = None,
                 gt_label_map: Optional[LabelMap] = None,
                 class_names: Optional[Sequence[str]] = None,
                 ignore_index: int = 255,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.pred_lut = (None if pred_label_map is None else
                         label_lut(pred_label_map, fill=ignore_index))
        self.gt_lut = None if gt_label_map is None else label_lut(gt_label_map, fill=ignore_index)
        self.class_names = None if class_names is None else tuple(class_names)

    def _num_classes(self) -> int:
        if self.num_classes is not None:
            return int(self.num_classes)
        if self.class_names is not None:
            return len(self.class_names)
        classes = (self.dataset_meta or {}).get('classes')
        if not classes:
            raise ValueError('CLSSegIoUMetric needs num_classes (or class_names, or a dataset '
                             'with metainfo classes)')
        return len(classes)

    def process(self, data_batch, data_samples: Sequence) -> None:
        """Histogram each image against its GT (one record per image)."""
        for sample in data_samples:
            self.process_sample(sample)

    def process_sample(self, sample) -> None:
        """Histogram one image against its GT."""
        num_classes = self._num_classes()
        record = dict(img_id=image_id(sample), hist=None, skipped=load_error(sample))
        gt = pixel_data(get_field(sample, 'gt_sem_seg'))
        pred = pixel_data(get_field(sample, 'pred_sem_seg'))
        if pred is None:
            pred = pixel_data(get_field(sample, 'pred_seg_map'))
        if record['skipped'] is None and gt is None:
            record['skipped'] = 'no ground truth (gt_sem_seg)'
        elif record['skipped'] is None and pred is None:
            record['skipped'] = 'no prediction (pred_sem_seg)'
        if record['skipped'] is None:
            gt, pred = gt.squeeze(), pred.squeeze().to(gt.device)
            if self.gt_lut is not None:
                gt = apply_label_lut(gt, self.gt_lut, self.ignore_index)
            if self.pred_lut is not None:
                pred = apply_label_lut(pred, self.pred_lut, self.ignore_index)
            try:
                record['hist'] = class_histograms(pred, gt, num_classes)
            except ValueError as e:
                raise ValueError(f'image {record["img_id"]}: {e}') from e
        self.results.append(record)

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        """Sum the histograms, compute both mIoUs, log the per-class table."""
        logger = MMLogger.get_current_instance()
        hists = [r['hist'] for r in results if r['hist'] is not None]
        skipped = [r for r in results if r['hist'] is None]
        metrics: Dict[str, float] = dict(num_images=len(hists), num_skipped=len(skipped))
        if skipped:
            logger.warning(f'{len(skipped)} images not scored, e.g. {skipped[0]["img_id"]}: '
                           f'{skipped[0]["skipped"]}')
        if not hists:
            logger.warning('CLSSegIoUMetric: no image could be scored; only counts are reported')
            return metrics
        hist = torch.stack(hists).sum(0)
        per_class = iou_from_histograms(hist)
        iou, acc = per_class['iou'], per_class['acc']
        metrics['mIoU'] = _nanmean(iou[per_class['in_gt']]) * 100
        metrics['mIoU_mmseg'] = _nanmean(iou[per_class['in_union']]) * 100
        metrics['mAcc'] = _nanmean(acc) * 100
        metrics['aAcc'] = float(hist[0].sum() / max(int(hist[2].sum()), 1)) * 100
        self._log_class_table(iou, acc, hist, logger)
        return metrics

    def _log_class_table(self, iou: np.ndarray, acc: np.ndarray, hist: torch.Tensor,
                         logger: MMLogger) -> None:
        names = self.class_names or tuple((self.dataset_meta or {}).get('classes', ()))
        if len(names) != iou.size:
            names = tuple(str(c) for c in range(iou.size))
        lines = [f'{"class":<20} {"IoU":>7} {"Acc":>7} {"GT px":>12} {"pred px":>12}']
        for c, name in enumerate(names):
            lines.append(f'{str(name)[:20]:<20} {iou[c] * 100:7.2f} {acc[c] * 100:7.2f} '
                         f'{int(hist[2, c]):12d} {int(hist[1, c]):12d}')
        print_log('per-class IoU:\n' + '\n'.join(lines), logger=logger)


def _nanmean(x: np.ndarray) -> float:
    """NaN-mean without numpy's empty-slice warning (NaN for no values)."""
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float('nan')

"""Multi-label tagging metrics with TagCLIP's per-image relative threshold.

mmpretrain's ``MultiLabelMetric`` has one fixed threshold for all images, and
min-max normalising first would change mAP's cross-image ranking, so
:class:`TaggingMetric` evaluates the raw scores itself. Definitions, ties and
classes without positives: docs/metrics.md, "Tagging metrics".
"""
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger, print_log
from mmseg.registry import METRICS

from ..records import get_field, image_id, load_error
from ..utils.class_names import class_key
from ..utils.quirks import Quirks, QuirksLike, resolve_quirks
from ..utils.thresholds import relative_threshold_mask

__all__ = [
    'relative_threshold_mask', 'average_precision', 'precision_recall_f1', 'TaggingMetric'
]

MODES = ('relative', 'fixed', 'tags')


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Non-interpolated AP of every class at once (see the module docstring).

    Args:
        scores: ``(N, C)`` scores, higher means more confident.
        targets: ``(N, C)`` bool (or 0/1) ground truth.

    Returns:
        ``(C,)`` float64 AP in [0, 1]; NaN for classes without positives, so
        the caller decides how they enter the mean.
    """
    if scores.shape != targets.shape or scores.dim() != 2:
        raise ValueError(f'scores and targets must both be (N, C); got {tuple(scores.shape)} '
                         f'and {tuple(targets.shape)}')
    num = scores.shape[0]
    scores = scores.double()
    order = torch.argsort(scores, dim=0, descending=True, stable=True)
    sorted_scores = scores.gather(0, order)
    positives = targets.bool().gather(0, order).double()
    true_pos = positives.cumsum(0)
    # Rank of the last member of each position's tie group: mark group ends,
    # then take a reverse running minimum over "index if end else num".
    ranks = torch.arange(num, device=scores.device)[:, None].expand_as(order)
    is_end = torch.ones_like(positives, dtype=torch.bool)
    is_end[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    group_end = torch.where(is_end, ranks, torch.full_like(ranks, num))
    group_end = group_end.flip(0).cummin(0).values.flip(0)
    precision = true_pos.gather(0, group_end) / (group_end + 1).double()
    num_pos = positives.sum(0)
    return (precision * positives).sum(0) / num_pos  # 0/0 -> NaN for empty classes


def precision_recall_f1(pred: torch.Tensor, targets: torch.Tensor,
                        class_mask: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """CP, CR, CF1, macro_F1, OP, OR, OF1 (percent) of binarised predictions.

    Args:
        pred: ``(N, C)`` bool predicted tags.
        targets: ``(N, C)`` bool ground truth.
        class_mask: ``(C,)`` bool, the classes that enter the class means
            (``None``: all). The overall (micro) terms always pool all classes.

    Returns:
        A dict of Python floats.
    """
    pred, targets = pred.bool(), targets.bool()
    tp = (pred & targets).sum(0).double()
    n_pred = pred.sum(0).double()
    n_true = targets.sum(0).double()
    prec_c = torch.where(n_pred > 0, tp / n_pred.clamp(min=1), torch.zeros_like(tp))
    rec_c = torch.where(n_true > 0, tp / n_true.clamp(min=1), torch.zeros_like(tp))
    f1_c = _harmonic(prec_c, rec_c)
    if class_mask is not None:
        prec_c, rec_c, f1_c = prec_c[class_mask], rec_c[class_mask], f1_c[class_mask]
    cp, cr = _mean(prec_c), _mean(rec_c)
    op = tp.sum() / n_pred.sum() if n_pred.sum() > 0 else tp.new_tensor(0.)
    orr = tp.sum() / n_true.sum() if n_true.sum() > 0 else tp.new_tensor(0.)
    out = dict(CP=cp, CR=cr, CF1=_harmonic(cp, cr), macro_F1=_mean(f1_c),
               OP=op, OR=orr, OF1=_harmonic(op, orr))
    return {k: float(v) * 100 for k, v in out.items()}


def _harmonic(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """2ab/(a+b) with 0 where a+b == 0."""
    total = a + b
    return torch.where(total > 0, 2 * a * b / torch.where(total > 0, total, 1), 0 * total)


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean() if x.numel() else x.new_tensor(float('nan'))


@METRICS.register_module()
class TaggingMetric(BaseMetric):
    """mAP and CP/CR/CF1/OP/OR/OF1 of a multi-label tagger (docs/metrics.md, "Tagging metrics").

    Reads ``pred_score``, ``gt_label`` or ``gt_score`` and, for ``'tags'``,
    ``pred_label``; images with a ``load_error`` count in ``num_skipped``,
    images without ground truth in ``num_unlabeled``.

    Args:
        ratio: ``r`` of the relative threshold (0.5 VOC/COCO, 0.1 COCO-Stuff).
        thr: The fixed threshold (tags are ``score > thr``; mmpretrain uses
            ``>=``, which differs only for scores exactly equal to ``thr``).
        modes: Which binarisations to report: ``'relative'`` (keys ``CP``,
            ``OF1``, ...; the reference protocol, without the arg-max
            fallback, as its F1 code), ``'fixed'`` (keys ``CP_thr0.5``, ...)
            and ``'tags'`` (keys ``CP_tags``, ...; the model's ``pred_label``).
        quirks: ``'reference'`` (default), ``'fixed'``, a dict of fields
            or a ``Quirks``; the metric reads ``empty_class_zero``.
        collect_device: ``'cpu'`` or ``'gpu'``, for gathering across ranks.
        prefix: Key prefix, default ``'tagging'``.
    """
    default_prefix: Optional[str] = 'tagging'

    def __init__(self,
                 ratio: float = 0.5,
                 thr: float = 0.5,
                 modes: Sequence[str] = ('relative', 'fixed'),
                 quirks: QuirksLike = 'reference',
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        unknown = set(modes) - set(MODES)
        if unknown:
            raise ValueError(f'unknown modes {sorted(unknown)}; choose from {MODES}')
        self.ratio = float(ratio)
        self.thr = float(thr)
        self.modes = tuple(modes)
        #: Resolved quirk switches; only ``empty_class_zero`` matters here.
        self.quirks: Quirks = resolve_quirks(quirks)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Keep each image's scores and one-hot labels (one record per image)."""
        for sample in data_samples:
            record = dict(img_id=image_id(sample), error=load_error(sample))
            if record['error'] is None:
                score = get_field(sample, 'pred_score')
                if score is None:
                    raise KeyError(f'image {record["img_id"]} has no pred_score to evaluate')
                score = torch.as_tensor(score).detach().float().cpu().flatten()
                record['score'] = score
                record['gt'] = _onehot(sample, 'gt_label', score.numel(), 'gt_score')
                if 'tags' in self.modes:
                    record['tags'] = _onehot(sample, 'pred_label', score.numel())
                    if record['tags'] is None:
                        raise KeyError(f'mode "tags" needs pred_label (the emitted tags), '
                                       f'missing for image {record["img_id"]}')
            self.results.append(record)

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        """Stack the scored images and compute every requested metric."""
        logger = MMLogger.get_current_instance()
        skipped = [r for r in results if r['error'] is not None]
        loaded = [r for r in results if r['error'] is None]
        scored = [r for r in loaded if r['gt'] is not None]
        metrics: Dict[str, float] = dict(
            num_images=len(scored), num_skipped=len(skipped),
            num_unlabeled=len(loaded) - len(scored))
        if skipped:
            logger.warning(f'{len(skipped)} images were skipped (failed to load) and are not '
                           f'scored, e.g. {skipped[0]["img_id"]}: {skipped[0]["error"]}')
        if not scored:
            logger.warning('TaggingMetric: no image with ground truth labels; only counts '
                           'are reported')
            return metrics
        scores = _stack([r['score'] for r in scored], 'pred_score')
        targets = torch.stack([r['gt'] for r in scored])
        has_pos = targets.any(0)
        class_mask = None if self.quirks.empty_class_zero else has_pos

        ap = average_precision(scores, targets)
        ap_mean = torch.nanmean(ap) if class_mask is not None else torch.nan_to_num(ap).mean()
        metrics['mAP'] = float(ap_mean) * 100

        binarised = {}
        if 'relative' in self.modes:
            binarised[''] = relative_threshold_mask(scores, self.ratio, fallback_argmax=False)
        if 'fixed' in self.modes:
            binarised[f'_thr{self.thr:g}'] = scores > self.thr
        if 'tags' in self.modes:
            binarised['_tags'] = torch.stack([r['tags'] for r in scored])
        per_class = {}
        for suffix, pred in binarised.items():
            for key, value in precision_recall_f1(pred, targets, class_mask).items():
                metrics[key + suffix] = value
            per_class[suffix] = pred
        self._log_class_table(ap, targets, per_class, logger)
        return metrics

    def _log_class_table(self, ap: torch.Tensor, targets: torch.Tensor,
                         binarised: Dict[str, torch.Tensor], logger: MMLogger) -> None:
        """Per-class AP, positives and (first binarisation's) P/R in the log."""
        names = _fg_class_names(self.dataset_meta, ap.numel())
        pred = next(iter(binarised.values()), None)
        lines = [f'{"class":<20} {"AP":>7} {"#pos":>6}' + ('' if pred is None else
                                                          f' {"P":>7} {"R":>7}')]
        n_true = targets.sum(0)
        if pred is not None:
            tp = (pred & targets).sum(0).double()
            prec = tp / pred.sum(0).clamp(min=1) * 100
            rec = tp / n_true.clamp(min=1) * 100
        for c, name in enumerate(names):
            line = f'{name[:20]:<20} {float(ap[c]) * 100:7.2f} {int(n_true[c]):6d}'
            if pred is not None:
                line += f' {float(prec[c]):7.2f} {float(rec[c]):7.2f}'
            lines.append(line)
        print_log('per-class tagging results:\n' + '\n'.join(lines), logger=logger)


def _onehot(sample, label_key: str, num_classes: int,
            score_key: Optional[str] = None) -> Optional[torch.Tensor]:
    """``(C,)`` bool from ``label_key`` indices or a ``score_key`` one-hot, else ``None``."""
    label = get_field(sample, label_key)
    if label is not None:
        if isinstance(label, Mapping) or hasattr(label, 'label'):  # mmcls-style LabelData
            label = get_field(label, 'label')
        label = torch.as_tensor(label).long().flatten().cpu()
        if label.numel() and (label.min() < 0 or label.max() >= num_classes):
            raise ValueError(f'{label_key} {label.tolist()} has indices outside '
                             f'[0, {num_classes}) (pred_score has {num_classes} classes)')
        return torch.zeros(num_classes, dtype=torch.bool).index_fill_(0, label, True)
    score = get_field(sample, score_key) if score_key else None
    if score is not None:
        return torch.as_tensor(score).flatten().cpu() > 0.5
    return None


def _stack(tensors: List[torch.Tensor], name: str) -> torch.Tensor:
    sizes = {t.numel() for t in tensors}
    if len(sizes) != 1:
        raise ValueError(f'{name} has different lengths across images: {sorted(sizes)}; '
                         'every image must be scored over the same class list')
    return torch.stack(tensors)


def _fg_class_names(meta: Optional[dict], num_classes: int) -> Tuple[str, ...]:
    """Foreground class names from the dataset meta, else indices.

    A list one longer than the scores starts with 'background' and drops it.
    """
    classes = tuple(class_key(c) for c in (meta or {}).get('classes', ()))
    if len(classes) == num_classes + 1:
        classes = classes[1:]
    if len(classes) != num_classes:
        classes = tuple(str(c) for c in np.arange(num_classes))
    return classes

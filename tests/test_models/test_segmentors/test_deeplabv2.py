"""DeepLab-v2 pieces against direct implementations written here.

The recipe is docs/method.md, "Stage 3: training DeepLab-v2 on pseudo masks (CLIP-ES protocol)".
"""
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import ConfigDict
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import tagclip_mmseg  # noqa: F401
from tagclip_mmseg.models import DeepLabV2Head, MultiScaleEncoderDecoder

init_default_scope('mmseg')

NUM_CLASSES = 5
#: ResNet-18 at 1/8 width: stage-4 features have 64 channels.
TINY_WIDTH = 64


def tiny_msc_cfg(**overrides) -> dict:
    """The DeepLab-v2 MSC model of the configs, shrunk to a CPU-sized ResNet-18."""
    cfg = dict(
        type='MultiScaleEncoderDecoder',
        scales=(1.0, 0.5, 0.75),
        data_preprocessor=dict(
            type='SegDataPreProcessor', mean=[104.008, 116.669, 122.675], std=[1., 1., 1.],
            bgr_to_rgb=False, pad_val=0, seg_pad_val=255),
        backbone=dict(
            type='ResNet', depth=18, stem_channels=8, base_channels=8, out_indices=(3, ),
            dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), style='caffe',
            norm_cfg=dict(type='BN', requires_grad=False), norm_eval=True),
        decode_head=dict(
            type='DeepLabV2Head', in_channels=TINY_WIDTH, in_index=0, num_classes=NUM_CLASSES,
            loss_decode=dict(type='CrossEntropyLoss', avg_non_ignore=True)),
        train_cfg=dict(),
        test_cfg=dict(mode='whole'))
    cfg.update(overrides)
    return cfg


def build_tiny_msc(**overrides) -> MultiScaleEncoderDecoder:
    torch.manual_seed(0)
    model = MODELS.build(ConfigDict(tiny_msc_cfg(**overrides)))
    model.init_weights()
    return model.eval()


def direct_aspp_v2(head: DeepLabV2Head, x: torch.Tensor) -> torch.Tensor:
    """sum_d conv3x3(x; dilation d, padding d), straight from the weights."""
    return sum(
        F.conv2d(x, conv.weight, conv.bias, padding=d, dilation=d)
        for conv, d in zip(head.aspp, head.dilations))


def direct_msc(model: MultiScaleEncoderDecoder, x: torch.Tensor) -> list:
    """[logits at 1.0, 0.5, 0.75, max] with the recipe of docs/method.md.

    The recipe is in "Stage 3: training DeepLab-v2 on pseudo masks (CLIP-ES protocol)".
    """
    outs = []
    for s in (1.0, 0.5, 0.75):
        xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode='bilinear',
                                              align_corners=False)
        outs.append(direct_aspp_v2(model.decode_head, model.backbone(xs)[0]))
    size = outs[0].shape[2:]
    resized = [F.interpolate(o, size=size, mode='bilinear', align_corners=False) for o in outs]
    fused = torch.maximum(torch.maximum(resized[0], resized[1]), resized[2])
    return outs + [fused]


# --------------------------------------------------------------------------- head


def test_head_is_sum_of_four_dilated_convs():
    head = MODELS.build(dict(type='DeepLabV2Head', in_channels=8, num_classes=3))
    head.init_weights()
    x = torch.randn(2, 8, 30, 30)
    assert head.dilations == (6, 12, 18, 24)
    assert not hasattr(head, 'conv_seg'), 'the branches are the classifier'
    assert sum(p.numel() for p in head.parameters()) == 4 * (8 * 3 * 9 + 3)
    torch.testing.assert_close(head([x]), direct_aspp_v2(head, x))
    assert head([x]).shape == (2, 3, 30, 30)


def test_head_init_is_normal_001_and_zero_bias():
    head = DeepLabV2Head(in_channels=256, num_classes=21)
    for conv in head.aspp:  # perturb so that init_weights must overwrite
        torch.nn.init.constant_(conv.bias, 1.0)
    head.init_weights()
    weights = torch.cat([conv.weight.flatten() for conv in head.aspp])
    assert abs(weights.mean().item()) < 1e-3
    assert weights.std().item() == pytest.approx(0.01, rel=0.05)
    assert all(torch.count_nonzero(conv.bias) == 0 for conv in head.aspp)


def test_head_custom_dilations_and_resize_concat():
    head = DeepLabV2Head(in_channels=[4, 6], in_index=[0, 1], input_transform='resize_concat',
                         num_classes=2, dilations=(1, 3))
    feats = [torch.randn(1, 4, 12, 12), torch.randn(1, 6, 6, 6)]
    cat = torch.cat([feats[0], F.interpolate(feats[1], size=(12, 12), mode='bilinear')], 1)
    torch.testing.assert_close(head(feats), direct_aspp_v2(head, cat))


@pytest.mark.parametrize('kwargs, match', [
    (dict(channels=512), 'channels'),
    (dict(dilations=()), 'dilations'),
    (dict(dilations=(0, 6)), 'dilations'),
    (dict(in_channels=[4, 4], in_index=[0, 1], input_transform='multiple_select'),
     'multiple_select'),
])
def test_head_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeepLabV2Head(**{'in_channels': 8, 'num_classes': 3, **kwargs})


# ------------------------------------------------------------------ MSC segmentor


def test_msc_forward_matches_direct_fusion():
    model = build_tiny_msc()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        expected = direct_msc(model, x)
        got = model.multi_scale_logits(x)
        fused = model(x, mode='tensor')
    assert [o.shape[2:] for o in got] == [(8, 6), (4, 3), (6, 5), (8, 6)]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    torch.testing.assert_close(fused, expected[-1])


def test_msc_predict_uses_fused_logits_only():
    model = build_tiny_msc()
    x = torch.randn(1, 3, 40, 56)
    sample = SegDataSample(metainfo=dict(img_shape=(40, 56), ori_shape=(40, 56),
                                         pad_shape=(40, 56), padding_size=[0, 0, 0, 0]))
    with torch.no_grad():
        pred = model(x, [sample], mode='predict')[0]
        fused = direct_msc(model, x)[-1]
    expected = F.interpolate(fused, size=(40, 56), mode='bilinear', align_corners=False)
    torch.testing.assert_close(pred.seg_logits.data, expected[0])
    assert torch.equal(pred.pred_sem_seg.data[0], expected[0].argmax(0))


def test_msc_slide_inference_runs_and_keeps_size():
    model = build_tiny_msc(test_cfg=dict(mode='slide', crop_size=(32, 32), stride=(24, 24)))
    x = torch.randn(1, 3, 48, 56)
    sample = SegDataSample(metainfo=dict(img_shape=(48, 56), ori_shape=(48, 56),
                                         pad_shape=(48, 56)))
    with torch.no_grad():
        pred = model(x, [sample], mode='predict')[0]
    assert pred.seg_logits.data.shape == (NUM_CLASSES, 48, 56)


def test_msc_loss_is_sum_of_four_ce_with_nearest_resized_labels():
    model = build_tiny_msc().train()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, NUM_CLASSES, (2, 1, 64, 64))
    labels[:, :, :20, :30] = 255  # an ignored region
    samples = [SegDataSample(gt_sem_seg=PixelData(data=lab)) for lab in labels]

    losses = model(x, samples, mode='loss')
    with torch.no_grad():
        model.eval()  # same weights; frozen BN makes train/eval identical
        outputs = direct_msc(model, x)
    names = ['decode_s1', 'decode_s0.5', 'decode_s0.75', 'decode_max']
    assert sorted(k for k in losses if 'loss' in k) == sorted(f'{n}.loss_ce' for n in names)
    total = 0.
    for name, logits in zip(names, outputs):
        target = F.interpolate(labels.float(), size=logits.shape[2:],
                               mode='nearest-exact').long()[:, 0]
        ce = F.cross_entropy(logits, target, ignore_index=255)  # mean over valid pixels
        torch.testing.assert_close(losses[f'{name}.loss_ce'], ce, rtol=1e-4, atol=1e-5)
        total = total + ce
    parsed, _ = model.parse_losses(losses)
    torch.testing.assert_close(parsed, total, rtol=1e-4, atol=1e-5)
    parsed.backward()
    assert all(conv.weight.grad is not None for conv in model.decode_head.aspp)
    assert all(not p.requires_grad for n, p in model.backbone.named_parameters() if 'bn' in n)


def test_msc_loss_through_data_preprocessor_pads_labels_with_255():
    model = build_tiny_msc(data_preprocessor=dict(
        type='SegDataPreProcessor', mean=[104.008, 116.669, 122.675], std=[1., 1., 1.],
        bgr_to_rgb=False, pad_val=0, seg_pad_val=255, size=(48, 48))).train()
    data = dict(
        inputs=[torch.randint(0, 255, (3, 40, 44), dtype=torch.uint8) for _ in range(2)],
        data_samples=[SegDataSample(gt_sem_seg=PixelData(
            data=torch.randint(0, NUM_CLASSES, (1, 40, 44)))) for _ in range(2)])
    batch = model.data_preprocessor(data, training=True)
    assert batch['inputs'].shape == (2, 3, 48, 48)
    assert (batch['data_samples'][0].gt_sem_seg.data[:, 40:] == 255).all()
    losses = model(**batch, mode='loss')
    assert all(torch.isfinite(v).all() for v in losses.values())


@pytest.mark.parametrize('scales', [(0.5, 0.75), (1.0, 1.0), (1.0, -0.5)])
def test_msc_rejects_bad_scales(scales):
    with pytest.raises(ValueError, match='scales'):
        MODELS.build(tiny_msc_cfg(scales=scales))

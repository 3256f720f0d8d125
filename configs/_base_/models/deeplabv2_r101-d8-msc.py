# DeepLab-v2 ResNet-101 with multi-scale inputs (deeplab-pytorch's DeepLabV2_ResNet101_MSC), the
# segmenter of the CLIP-ES protocol (docs/method.md, "Stage 3: training DeepLab-v2 on pseudo
# masks").
#
# * Backbone: 7x7-stem ResNet-101 with the stride on the first 1x1 conv of a
#   block ('caffe' style, like the Caffe-converted ImageNet weights of
#   deeplab-pytorch / AdvCAM), dilations 2 and 4 in the last two stages
#   (output stride 8), no dilation contraction, BatchNorm frozen (statistics
#   and affine parameters). A torchvision-format checkpoint needs
#   style='pytorch'. Known deviation: deeplab-pytorch's stem max-pool uses
#   ceil_mode=True; mmseg's does not (same sizes for odd inputs such as 321).
# * Head: ASPP-v2, four summed dilated 3x3 classifiers (DeepLabV2Head).
# * Segmentor: inputs at scales 1.0, 0.5, 0.75, max-fused logits, loss summed
#   over the four outputs (MultiScaleEncoderDecoder).
# * Input: BGR, Caffe mean subtracted, no std. The data preprocessor pads
#   *after* normalisation with 0, i.e. with the mean colour, and the labels
#   with 255, as deeplab-pytorch pads its crops.
#
# The backbone has no pretrained weights here; top configs set
# model.backbone.init_cfg = dict(type='Pretrained', checkpoint=...).
norm_cfg = dict(type='BN', requires_grad=False)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[104.008, 116.669, 122.675],
    std=[1.0, 1.0, 1.0],
    bgr_to_rgb=False,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='MultiScaleEncoderDecoder',
    scales=(1.0, 0.5, 0.75),
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='ResNet',
        depth=101,
        num_stages=4,
        out_indices=(3, ),
        dilations=(1, 1, 2, 4),
        strides=(1, 2, 1, 1),
        style='caffe',
        contract_dilation=False,
        norm_cfg=norm_cfg,
        norm_eval=True),
    decode_head=dict(
        type='DeepLabV2Head',
        in_channels=2048,
        in_index=0,
        dilations=(6, 12, 18, 24),
        num_classes=21,
        align_corners=False,
        ignore_index=255,
        # avg_non_ignore: mean over the labelled pixels, like torch's
        # CrossEntropyLoss(ignore_index=255) in deeplab-pytorch (mmseg's
        # default divides by all pixels, ignored ones included).
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0, avg_non_ignore=True)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

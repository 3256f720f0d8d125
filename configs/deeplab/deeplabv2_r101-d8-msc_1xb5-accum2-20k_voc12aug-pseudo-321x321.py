# DeepLab-v2 ResNet-101 MSC trained on pseudo masks of VOC 2012 train_aug, validated on VOC 2012
# val: the CLIP-ES segmentation protocol (docs/method.md, "Stage 3: training DeepLab-v2 on pseudo
# masks").
# One GPU, batch 5 with 2-step gradient accumulation (effective batch 10),
# 20k optimiser updates (40k loader iterations), 321x321 crops.
#
#   python tools/train.py configs/deeplab/THIS.py
#   python tools/test.py configs/deeplab/THIS.py work_dirs/THIS/iter_40000.pth
# ImageNet-pretrained ResNet-101 (the protocol's initialisation; LR 2e-4) as a
# state dict in mmseg's ResNet key format (conv1, bn1, layer1..layer4) with the
# Caffe stride placement of deeplab-pytorch's weights (style='caffe' in the
# model base). Nothing is downloaded: place the file here or pass
# --cfg-options model.backbone.init_cfg.checkpoint=PATH.
backbone_checkpoint = 'data/pretrained/resnet101_caffe_imagenet.pth'
# PNG pseudo masks, one per train_aug id (tools/generate_pseudo_labels.py --out);
# absolute, or <repo>/work_dirs/... via {{fileDirname}} (this config's folder).
pseudo_label_dir = '{{fileDirname}}/../../work_dirs/pseudo_labels/voc12_train_aug'

_base_ = [
    '../_base_/models/deeplabv2_r101-d8-msc.py',
    '../_base_/datasets/voc12aug_pseudo_321x321.py',
    'mmseg::_base_/default_runtime.py',
    '../_base_/schedules/schedule_deeplabv2_20k.py',
]
custom_imports = dict(imports=['tagclip_mmseg'], allow_failed_imports=False)

crop_size = (321, 321)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=backbone_checkpoint)),
    decode_head=dict(num_classes=21))
train_dataloader = dict(
    dataset=dict(data_prefix=dict(seg_map_path=pseudo_label_dir)))

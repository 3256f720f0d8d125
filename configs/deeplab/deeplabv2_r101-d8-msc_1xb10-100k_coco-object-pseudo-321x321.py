# DeepLab-v2 ResNet-101 MSC trained on pseudo masks of COCO 2014 train (81 classes), validated on
# COCO 2017 val. CLIP-ES does not publish its COCO schedule (its Appendix D); this is the common
# setting of the same ecosystem (LPCAM, RIB; docs/method.md, "Stage 3: training DeepLab-v2 on pseudo
# masks", COCO): batch 10 on one GPU, 100k iterations, LR 2e-4 from an ImageNet initialisation,
# 321x321 crops. Everything else as the VOC config. Validation: COCO 2017 val (see the dataset
# base).
#
#   python tools/train.py configs/deeplab/THIS.py
#   python tools/test.py configs/deeplab/THIS.py work_dirs/THIS/iter_100000.pth
# ImageNet-pretrained ResNet-101, mmseg ResNet key format, Caffe stride
# placement; see the VOC DeepLab-v2 config. Nothing is downloaded.
backbone_checkpoint = 'data/pretrained/resnet101_caffe_imagenet.pth'
# PNG pseudo masks of the train images (tools/generate_pseudo_labels.py --out);
# absolute, or <repo>/work_dirs/... via {{fileDirname}} (this config's folder).
pseudo_label_dir = '{{fileDirname}}/../../work_dirs/pseudo_labels/coco14_train'

_base_ = [
    '../_base_/models/deeplabv2_r101-d8-msc.py',
    '../_base_/datasets/coco-object_pseudo_321x321.py',
    'mmseg::_base_/default_runtime.py',
    '../_base_/schedules/schedule_deeplabv2_20k.py',
]
custom_imports = dict(imports=['tagclip_mmseg'], allow_failed_imports=False)

crop_size = (321, 321)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=backbone_checkpoint)),
    decode_head=dict(num_classes=81))
train_dataloader = dict(
    batch_size=10,
    dataset=dict(data_prefix=dict(seg_map_path=pseudo_label_dir)))

# Batch 10 without accumulation: one optimiser update per iteration.
optim_wrapper = dict(accumulative_counts=1)
param_scheduler = [
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=100000, by_epoch=False)
]
train_cfg = dict(max_iters=100000, val_interval=10000)
default_hooks = dict(checkpoint=dict(interval=10000))

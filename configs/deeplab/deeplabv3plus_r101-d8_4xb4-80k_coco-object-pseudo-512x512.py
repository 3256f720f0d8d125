# DeepLabV3+ R101 on pseudo masks of COCO 2014 train (81 classes), validated
# on COCO 2017 val: mmseg's DeepLabV3+ recipe (4 GPUs x batch 4, 512x512,
# mmseg's augmentation, 80k iterations as its COCO-Stuff-164k schedules) on
# the COCO-object data of coco-object_pseudo_321x321.py.
#
#   bash tools/dist_train.sh configs/deeplab/THIS.py 4
# The backbone weights come from mmseg's `open-mmlab://resnet101_v1c`
# (downloaded at the start of training; on an offline cluster pass
# --cfg-options model.pretrained=/path/to/resnet101_v1c.pth).
# PNG pseudo masks of the train images (tools/generate_pseudo_labels.py --out);
# absolute, or <repo>/work_dirs/... via {{fileDirname}} (this config's folder).
pseudo_label_dir = '{{fileDirname}}/../../work_dirs/pseudo_labels/coco14_train'

_base_ = [
    'mmseg::_base_/models/deeplabv3plus_r50-d8.py',
    '../_base_/datasets/coco-object_pseudo_321x321.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py',
]
custom_imports = dict(imports=['tagclip_mmseg'], allow_failed_imports=False)

crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained='open-mmlab://resnet101_v1c',
    backbone=dict(depth=101),
    decode_head=dict(num_classes=81),
    auxiliary_head=dict(num_classes=81))

# mmseg's 512x512 augmentation (as in its VOC / COCO-Stuff dataset configs).
train_pipeline = [
    # COCO masks refer to the stored pixels (README.md, "Image orientation")
    dict(type='LoadImageFromFile', color_type='color_ignore_orientation'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    # COCO masks refer to the stored pixels (README.md, "Image orientation")
    dict(type='LoadImageFromFile', color_type='color_ignore_orientation'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=4,
    dataset=dict(
        data_prefix=dict(seg_map_path=pseudo_label_dir),
        pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

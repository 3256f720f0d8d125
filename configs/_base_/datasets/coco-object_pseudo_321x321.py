# COCO-object (background + 80 classes) with pseudo masks of COCO 2014 train
# as labels, validated on COCO 2014 val with the 81-class masks: the COCO data
# of the CLIP-ES DeepLab-v2 protocol (spec section 9, deeplab-pytorch style
# augmentation as in voc12aug_pseudo_321x321.py).
#
# Layout:
#   data/coco2014/train2014/<id>.jpg, data/coco2014/val2014/<id>.jpg
#   data/coco2014/SegmentationClass/val2014/<id>.png   real 81-class masks
#       (0 = background, 1..80 = COCO classes in category order, 255 ignore;
#       the VOC-format masks distributed with CLIP-ES / TagCLIP)
#   <pseudo_label_dir>/<id>.png   pseudo masks of the train images
#       (tools/generate_pseudo_labels.py --out), 255 = ignore
# The training list is every image of train2014 that has a pseudo mask (the
# ~700 train images without objects have none and are skipped with a warning);
# set ann_file to an id list to train on a subset. mmseg joins a *relative*
# seg_map_path to data_root, so the default folder is absolute:
# <repo>/work_dirs/pseudo_labels/coco2014_train, spelled with mmengine's
# {{fileDirname}} (this file's folder; classic configs cannot import os.path
# under Python >= 3.11, trap 10). Pass an absolute path to override it:
#   --cfg-options train_dataloader.dataset.data_prefix.seg_map_path=/abs/dir
dataset_type = 'COCOObjectTaggedSegDataset'
data_root = 'data/coco2014'
pseudo_label_dir = '{{fileDirname}}/../../../work_dirs/pseudo_labels/coco2014_train'
crop_size = (321, 321)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(
        type='RandomChoice',
        transforms=[[dict(type='Resize', scale_factor=s, keep_ratio=True)]
                    for s in (0.5, 0.75, 1.0, 1.25, 1.5)]),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=1.0),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]

train_dataloader = dict(
    batch_size=10,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='train2014', seg_map_path=pseudo_label_dir),
        ann_file='',
        tag_source='none',
        on_missing='skip',
        reduce_zero_label=False,
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='val2014', seg_map_path='SegmentationClass/val2014'),
        ann_file='',
        tag_source='none',
        on_missing='skip',
        reduce_zero_label=False,
        pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'], ignore_index=255)
test_evaluator = val_evaluator

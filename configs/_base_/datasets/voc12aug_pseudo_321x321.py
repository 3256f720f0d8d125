# PASCAL VOC 2012 train_aug (10,582 images) with pseudo masks as labels, and
# VOC 2012 val (1,449 images) with the real masks for validation: the data of
# the CLIP-ES DeepLab-v2 protocol (spec section 9, deeplab-pytorch voc12.yaml).
#
# Layout (mmseg's, after tools/dataset_converters/voc_aug.py):
#   data/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
#   data/VOCdevkit/VOC2012/SegmentationClass/<id>.png     real masks (val)
#   data/VOCdevkit/VOC2012/SegmentationClassAug/<id>.png  real masks of
#       train_aug (SBD + VOC); NOT used here: pseudo masks replace them
#   data/VOCdevkit/VOC2012/ImageSets/Segmentation/{trainaug,val}.txt
#   <pseudo_label_dir>/<id>.png   one palette or L-mode PNG per train_aug id,
#       classes 0..20, 255 = ignore (low-confidence pixels), as written by
#       tools/generate_pseudo_labels.py
# mmseg joins a *relative* seg_map_path to data_root, so the default folder
# is absolute: <repo>/work_dirs/pseudo_labels/voc12_train_aug, spelled with
# mmengine's {{fileDirname}} (this file's folder) because classic configs
# cannot import os.path under Python >= 3.11 (trap 10). To use another
# folder, pass an absolute path:
#   --cfg-options train_dataloader.dataset.data_prefix.seg_map_path=/abs/dir
dataset_type = 'PascalVOCDataset'
data_root = 'data/VOCdevkit/VOC2012'
pseudo_label_dir = '{{fileDirname}}/../../../work_dirs/pseudo_labels/voc12_train_aug'
crop_size = (321, 321)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    # One of five discrete scale factors of the original image, as
    # deeplab-pytorch (mmseg's RandomResize would draw a continuous ratio).
    dict(
        type='RandomChoice',
        transforms=[[dict(type='Resize', scale_factor=s, keep_ratio=True)]
                    for s in (0.5, 0.75, 1.0, 1.25, 1.5)]),
    # Crops smaller than 321 are padded by the data preprocessor (mean colour
    # / 255), at the bottom-right like deeplab-pytorch.
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=1.0),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
# Full image, no resize (the protocol's test setting).
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]

train_dataloader = dict(
    batch_size=5,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='JPEGImages', seg_map_path=pseudo_label_dir),
        ann_file='ImageSets/Segmentation/trainaug.txt',
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
        data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
        ann_file='ImageSets/Segmentation/val.txt',
        reduce_zero_label=False,
        pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'], ignore_index=255)
test_evaluator = val_evaluator

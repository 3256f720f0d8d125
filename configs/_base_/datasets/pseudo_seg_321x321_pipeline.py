# What the CLIP-ES DeepLab-v2 protocol (spec section 9, deeplab-pytorch) does
# to any dataset: train on pseudo masks with deeplab-pytorch's augmentation,
# validate on full images with the real masks. Dataset configs that inherit
# this file add the dataset type, paths, batch size and dataset options.
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
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(reduce_zero_label=False, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(reduce_zero_label=False, pipeline=test_pipeline))
# A dataset config that sets val_dataloader sets test_dataloader the same way
# (``test_dataloader = val_dataloader``), merging into this one.
test_dataloader = val_dataloader

val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'], ignore_index=255)
test_evaluator = val_evaluator

# What the CLIP-ES DeepLab-v2 protocol (docs/method.md, "Stage 3: training DeepLab-v2 on pseudo
# masks"; deeplab-pytorch) does to any dataset: train on pseudo masks with deeplab-pytorch's
# augmentation, validate on full images with the real masks. Dataset configs that inherit this file
# add the dataset type, paths, batch size and dataset options.
crop_size = (321, 321)
# Orientation (README.md, "Image orientation"): VOC / COCO masks, real and
# pseudo, refer to the pixels as stored, so the benchmark pipelines read them
# as stored ('color_ignore_orientation'), as the benchmark tagging and
# pseudo-label configs do (exif_transpose=False). Masks of your own photos,
# made upright (tagclip_vit-b16_folder.py, upright_pseudo_label_pipeline),
# train with upright_train_pipeline: mmcv's default loader, EXIF applied.
stored_pixels_image_loader = dict(type='LoadImageFromFile',
                                  color_type='color_ignore_orientation')

train_pipeline = [
    stored_pixels_image_loader,
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
upright_train_pipeline = [dict(type='LoadImageFromFile')] + train_pipeline[1:]
# Full image, no resize (the protocol's test setting).
test_pipeline = [
    stored_pixels_image_loader,
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

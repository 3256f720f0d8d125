# mmseg's DeepLabV3+ R101 VOC recipe (4 GPUs x batch 4, 20k iterations,
# 512x512) with one change: it trains on pseudo masks of VOC 2012 train_aug
# instead of the real SegmentationClass(Aug) masks. Validation stays on VOC
# 2012 val with the real masks. A stronger, standard alternative to the
# DeepLab-v2 protocol.
#
#   bash tools/dist_train.sh configs/deeplab/THIS.py 4
# The backbone weights come from mmseg's `open-mmlab://resnet101_v1c`
# (downloaded at the start of training; on an offline cluster pass
# --cfg-options model.pretrained=/path/to/resnet101_v1c.pth).
# PNG pseudo masks, one per train_aug id (tools/generate_pseudo_labels.py --out);
# absolute, or <repo>/work_dirs/... via {{fileDirname}} (this config's folder).
pseudo_label_dir = '{{fileDirname}}/../../work_dirs/pseudo_labels/voc12_train_aug'

_base_ = 'mmseg::deeplabv3plus/deeplabv3plus_r101-d8_4xb4-20k_voc12aug-512x512.py'
custom_imports = dict(imports=['tagclip_mmseg'], allow_failed_imports=False)

# VOC masks (real and pseudo) refer to the pixels as stored: read images as
# stored too, as the VOC tagging and pseudo-label configs do (README.md,
# "Image orientation"); mmseg's loader would apply the EXIF orientation.
train_pipeline = [
    dict(t, color_type='color_ignore_orientation') if t['type'] == 'LoadImageFromFile' else t
    for t in _base_.train_pipeline
]
test_pipeline = [
    dict(t, color_type='color_ignore_orientation') if t['type'] == 'LoadImageFromFile' else t
    for t in _base_.test_pipeline
]
# mmseg trains on train + aug (a ConcatDataset of real masks); the pseudo
# masks cover all of train_aug in one folder, so one dataset replaces both.
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='PascalVOCDataset',
        data_root=_base_.data_root,
        data_prefix=dict(img_path='JPEGImages', seg_map_path=pseudo_label_dir),
        ann_file='ImageSets/Segmentation/trainaug.txt',
        reduce_zero_label=False,
        pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# COCO-object (background + 80 classes) with pseudo masks of COCO 2014 train as labels, validated on
# COCO 2017 val with the 81-class masks (the split TagCLIP evaluates COCO-object on; docs/method.md,
# "Segmentation evaluation"): the COCO data of the CLIP-ES DeepLab-v2 protocol (docs/method.md,
# "Stage 3: training DeepLab-v2 on pseudo masks"; deeplab-pytorch style augmentation of
# pseudo_seg_321x321_pipeline.py).
#
# Layout (shared with configs/pseudo_labelers/ and configs/tagclip/):
#   data/coco/train2014/<id>.jpg, data/coco/train2014_ids.txt
#   data/coco/val2017/<id>.jpg,   data/coco/val2017_ids.txt
#   data/coco/SegmentationClass/val2017/<id>.png   real 81-class masks
#       (0 = background, 1..80 = COCO classes in category order, 255 ignore;
#       the VOC-format masks distributed with TagCLIP / CLIP-ES)
#   <pseudo_label_dir>/<id>.png   pseudo masks of the train images
#       (tools/generate_pseudo_labels.py --out), 255 = ignore
# Listed images without a pseudo mask are skipped with a warning. The usual
# WSSS COCO benchmark is COCO 2014 val (40,137 images): point val_dataloader
# at val2014 and SegmentationClass/val2014 for it.
# mmseg joins a *relative* seg_map_path to data_root, so the default folder is absolute:
# <repo>/work_dirs/pseudo_labels/coco14_train, spelled with mmengine's {{fileDirname}} (this file's
# folder; classic configs cannot import os.path under Python >= 3.11, docs/compatibility.md,
# "Traps": pure-Python configs). Pass an absolute path to override it:
#   --cfg-options train_dataloader.dataset.data_prefix.seg_map_path=/abs/dir
_base_ = ['./pseudo_seg_321x321_pipeline.py']

dataset_type = 'COCOObjectTaggedSegDataset'
data_root = 'data/coco'
pseudo_label_dir = '{{fileDirname}}/../../../work_dirs/pseudo_labels/coco14_train'

train_dataloader = dict(
    batch_size=10,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='train2014', seg_map_path=pseudo_label_dir),
        ann_file='train2014_ids.txt',
        tag_source='none',
        on_missing='skip'))
val_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='val2017', seg_map_path='SegmentationClass/val2017'),
        ann_file='val2017_ids.txt',
        tag_source='none',
        on_missing='skip'))
test_dataloader = val_dataloader

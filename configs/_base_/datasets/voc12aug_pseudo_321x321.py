# PASCAL VOC 2012 train_aug (10,582 images) with pseudo masks as labels, and VOC 2012 val (1,449
# images) with the real masks for validation: the data of the CLIP-ES DeepLab-v2 protocol
# (docs/method.md, "Stage 3: training DeepLab-v2 on pseudo masks"; deeplab-pytorch voc12.yaml).
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
# mmseg joins a *relative* seg_map_path to data_root, so the default folder is absolute:
# <repo>/work_dirs/pseudo_labels/voc12_train_aug, spelled with mmengine's {{fileDirname}} (this
# file's folder) because classic configs cannot import os.path under Python >= 3.11
# (docs/compatibility.md, "Traps": pure-Python configs). To use another folder, pass an absolute
# path:
#   --cfg-options train_dataloader.dataset.data_prefix.seg_map_path=/abs/dir
_base_ = ['./pseudo_seg_321x321_pipeline.py']

dataset_type = 'PascalVOCDataset'
data_root = 'data/VOCdevkit/VOC2012'
pseudo_label_dir = '{{fileDirname}}/../../../work_dirs/pseudo_labels/voc12_train_aug'

train_dataloader = dict(
    batch_size=5,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='JPEGImages', seg_map_path=pseudo_label_dir),
        ann_file='ImageSets/Segmentation/trainaug.txt'))
val_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
        ann_file='ImageSets/Segmentation/val.txt'))
test_dataloader = val_dataloader

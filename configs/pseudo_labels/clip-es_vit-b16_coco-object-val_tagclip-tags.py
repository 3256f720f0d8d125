# CLS-SEG on COCO val2017 (81 classes). Paper: 34.0 mIoU (no CRF).
# CAA: blocks 5-12, box threshold 0.7 (spec 6.3).
_base_ = [
    '../_base_/models/clip-es_vit-b16.py', '../_base_/datasets/coco-object_val_pseudo.py',
    '../_base_/default_runtime_training_free.py'
]
model = dict(
    class_names='coco-cam',
    background_words='coco',
    caa_layers=(4, 5, 6, 7, 8, 9, 10, 11),
    caa_box_thr=0.7)

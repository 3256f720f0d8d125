# CLS-SEG on COCO val2017 (81 classes). Paper: 34.0 mIoU (no CRF).
# CAA: blocks 5-12, box threshold 0.7 (docs/method.md, "Class-aware attention affinity (CAA)").
_base_ = [
    '../_base_/models/clip-es_vit-b16_coco.py', '../_base_/datasets/coco-object_val_pseudo.py',
    '../_base_/default_runtime_training_free.py'
]

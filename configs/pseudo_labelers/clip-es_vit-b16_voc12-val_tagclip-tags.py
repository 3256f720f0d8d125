# CLS-SEG on VOC2012 val: TagCLIP tags -> CLIP-ES masks, evaluated directly.
# Paper: 64.8 mIoU (no CRF). Tags: tools/test.py configs/tagclip/tagclip_vit-b16_voc12-val.py
#   python tools/generate_pseudo_labels.py THIS_CONFIG --out work_dirs/pseudo_labels/voc12_val
_base_ = [
    '../_base_/models/clip-es_vit-b16.py', '../_base_/datasets/voc12_val_pseudo.py',
    '../_base_/default_runtime_training_free.py'
]

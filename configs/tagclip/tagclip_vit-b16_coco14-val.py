# TagCLIP on COCO2014 val (40137 images). Paper: mAP 68.8.
_base_ = [
    '../_base_/models/tagclip_vit-b16.py', '../_base_/datasets/coco14_val_cls.py',
    '../_base_/default_runtime_training_free.py'
]
model = dict(background_words='coco')

# 81-class pseudo masks on COCO2014 train from TagCLIP tags, for configs/deeplab/.
_base_ = [
    '../_base_/models/clip-es_vit-b16_coco.py', '../_base_/datasets/coco14_train_pseudo.py',
    '../_base_/default_runtime_training_free.py'
]

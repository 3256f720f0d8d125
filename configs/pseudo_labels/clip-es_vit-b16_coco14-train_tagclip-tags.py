# 81-class pseudo masks on COCO2014 train from TagCLIP tags, for configs/deeplab/.
_base_ = [
    '../_base_/models/clip-es_vit-b16.py', '../_base_/datasets/coco14_train_pseudo.py',
    '../_base_/default_runtime_training_free.py'
]
model = dict(
    class_names='coco-cam',
    background_words='coco',
    caa_layers=(4, 5, 6, 7, 8, 9, 10, 11),
    caa_box_thr=0.7)

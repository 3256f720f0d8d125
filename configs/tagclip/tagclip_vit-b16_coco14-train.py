# TagCLIP tags for COCO2014 train (82081 images), the input of
# configs/pseudo_labelers/clip-es_vit-b16_coco14-train_tagclip-tags.py.
_base_ = [
    '../_base_/models/tagclip_vit-b16.py', '../_base_/datasets/coco14_train_cls.py',
    '../_base_/default_runtime_training_free.py'
]
model = dict(background_words='coco')

# TagCLIP tags for VOC2012 train_aug (10582 images), the input of
# configs/pseudo_labelers/clip-es_vit-b16_voc12-trainaug_tagclip-tags.py.
_base_ = [
    '../_base_/models/tagclip_vit-b16.py', '../_base_/datasets/voc12_cls.py',
    '../_base_/default_runtime_training_free.py'
]
model = dict(background_words='voc')

# TagCLIP on VOC2007 test. Paper: mAP 92.8.
#   python tools/test.py configs/tagclip/tagclip_vit-b16_voc07-test.py
_base_ = [
    '../_base_/models/tagclip_vit-b16.py', '../_base_/datasets/voc07_test_cls.py',
    '../_base_/default_runtime_training_free.py'
]
model = dict(background_words='voc')

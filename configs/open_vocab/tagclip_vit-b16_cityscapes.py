# Cityscapes val (500 images, 19 classes, mmseg's CityscapesDataset): the
# protocol resizes the shorter side to 560 (SCLIP/NACLIP); stuff setting.
_base_ = [
    'mmseg::_base_/datasets/cityscapes.py',
    '../_base_/models/tagclip-seg_vit-b16_stuff.py',
    '../_base_/open_vocab_runtime.py'
]
test_pipeline = [
    dict(t, scale=(2048, 560)) if t['type'] == 'Resize' else t
    for t in _base_.open_vocab_test_pipeline
]
test_dataloader = dict(batch_size=1, dataset=dict(pipeline=test_pipeline))
# Test only: mmseg's dataset bases also define training/validation loaders.
train_dataloader = None
val_dataloader = None
val_evaluator = None

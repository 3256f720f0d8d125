# VOC20: PASCAL VOC 2012 val without background (PascalVOC20Dataset,
# reduce_zero_label): no background channel, argmax over the tag maps; the VOC
# background words only compete in the CAM softmax.
_base_ = [
    'mmseg::_base_/datasets/pascal_voc12.py',
    '../_base_/models/tagclip-seg_vit-b16.py',
    '../_base_/open_vocab_runtime.py'
]
open_vocab_benchmark = 'voc20'  # its sizes: _base_.open_vocab_sizes
model = dict(
    test_cfg=_base_.open_vocab_slide[open_vocab_benchmark],
    with_background=False,
    tagger=dict(class_names='voc'),
    labeler=dict(class_names='voc-cam'))
test_dataloader = dict(
    batch_size=1,
    dataset=dict(type='PascalVOC20Dataset',
                 pipeline=_base_.open_vocab_pipelines[open_vocab_benchmark]))
# Test only: mmseg's dataset bases also define training/validation loaders.
train_dataloader = None
val_dataloader = None
val_evaluator = None

# Context60: PASCAL Context val (5104 images), background + 59 classes, mmseg's
# PascalContextDataset; class names from the dataset. VOC background words that
# are Context classes ('sky', 'road', ...) are dropped from the competitors.
_base_ = [
    'mmseg::_base_/datasets/pascal_context.py',
    '../_base_/models/tagclip-seg_vit-b16.py',
    '../_base_/open_vocab_runtime.py'
]
open_vocab_benchmark = 'context60'  # its sizes: _base_.open_vocab_sizes
model = dict(test_cfg=_base_.open_vocab_slide[open_vocab_benchmark])
test_dataloader = dict(
    batch_size=1, dataset=dict(pipeline=_base_.open_vocab_pipelines[open_vocab_benchmark]))
# Test only: mmseg's dataset bases also define training/validation loaders.
train_dataloader = None
val_dataloader = None
val_evaluator = None

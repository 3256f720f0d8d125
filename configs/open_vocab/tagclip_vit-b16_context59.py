# Context59: PASCAL Context val without background (PascalContextDataset59,
# reduce_zero_label), class names from the dataset, stuff setting.
_base_ = [
    'mmseg::_base_/datasets/pascal_context_59.py',
    '../_base_/models/tagclip-seg_vit-b16_stuff.py',
    '../_base_/open_vocab_runtime.py'
]
open_vocab_benchmark = 'context59'  # its sizes: _base_.open_vocab_sizes
model = dict(test_cfg=_base_.open_vocab_slide[open_vocab_benchmark])
test_dataloader = dict(
    batch_size=1, dataset=dict(pipeline=_base_.open_vocab_pipelines[open_vocab_benchmark]))
# Test only: mmseg's dataset bases also define training/validation loaders.
train_dataloader = None
val_dataloader = None
val_evaluator = None

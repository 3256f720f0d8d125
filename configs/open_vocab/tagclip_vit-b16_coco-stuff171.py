# COCO-Stuff-171: COCO-Stuff 164k val (5000 images, 171 classes, mmseg's
# COCOStuffDataset), class names from the dataset, the paper's COCO-Stuff
# setting (no background channel).
_base_ = [
    'mmseg::_base_/datasets/coco-stuff164k.py',
    '../_base_/models/tagclip-seg_vit-b16_stuff.py',
    '../_base_/open_vocab_runtime.py'
]
open_vocab_benchmark = 'coco_stuff171'  # its sizes: _base_.open_vocab_sizes
model = dict(test_cfg=_base_.open_vocab_slide[open_vocab_benchmark])
test_dataloader = dict(
    batch_size=1, dataset=dict(pipeline=_base_.open_vocab_pipelines[open_vocab_benchmark]))
# Test only: mmseg's dataset bases also define training/validation loaders.
train_dataloader = None
val_dataloader = None
val_evaluator = None

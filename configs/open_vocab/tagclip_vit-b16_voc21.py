# VOC21: PASCAL VOC 2012 val (1449 images), background + 20 classes, mmseg's
# PascalVOCDataset. Tagger: TagCLIP's VOC names; CAMs: CLIP-ES's renamed VOC
# names ('voc-cam'); background = 1 - max(CAMs).
_base_ = [
    'mmseg::_base_/datasets/pascal_voc12.py',
    '../_base_/models/tagclip-seg_vit-b16.py',
    '../_base_/open_vocab_runtime.py'
]
open_vocab_benchmark = 'voc21'  # its sizes: _base_.open_vocab_sizes
model = dict(
    test_cfg=_base_.open_vocab_slide[open_vocab_benchmark],
    tagger=dict(class_names='voc'), labeler=dict(class_names='voc-cam'))
test_dataloader = dict(
    batch_size=1, dataset=dict(pipeline=_base_.open_vocab_pipelines[open_vocab_benchmark]))
# Test only: mmseg's dataset bases also define training/validation loaders.
train_dataloader = None
val_dataloader = None
val_evaluator = None

# COCO-Object: COCO 2017 val, background + 80 things (COCOObjectDataset,
# <id>_instanceTrainIds.png next to COCO-Stuff's masks), TagCLIP's COCO names
# and CLIP-ES's COCO renames and CAM setting (CAA blocks 5-12, box 0.7).
_base_ = [
    'mmseg::_base_/datasets/coco-stuff164k.py',
    '../_base_/models/tagclip-seg_vit-b16.py',
    '../_base_/open_vocab_runtime.py'
]
open_vocab_benchmark = 'coco_object'  # its sizes: _base_.open_vocab_sizes
model = dict(
    test_cfg=_base_.open_vocab_slide[open_vocab_benchmark],
    tagger=dict(class_names='coco', background_words='coco'),
    labeler=dict(class_names='coco-cam', background_words='coco',
                 caa_layers=(4, 5, 6, 7, 8, 9, 10, 11), caa_box_thr=0.7))
test_dataloader = dict(
    batch_size=1,
    dataset=dict(
        type='COCOObjectDataset',
        reduce_zero_label=False,
        pipeline=_base_.open_vocab_pipelines[open_vocab_benchmark]))
# Test only: mmseg's dataset bases also define training/validation loaders.
train_dataloader = None
val_dataloader = None
val_evaluator = None

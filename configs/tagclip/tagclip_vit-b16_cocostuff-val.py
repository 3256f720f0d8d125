# TagCLIP tags for COCO-Stuff val (4172 images, 171 classes): no background words, DMAR averages
# blocks 1-11, relative thresholds 0.1 (docs/method.md, "TagCLIP's classifier text", "TagCLIP, step
# by step").
_base_ = [
    '../_base_/models/tagclip_vit-b16.py', '../_base_/datasets/tagging_pipeline.py',
    '../_base_/default_runtime_training_free.py'
]
model = dict(
    background_words='cocostuff',
    avg_layers=tuple(range(11)),
    cwr_ratio=0.1,
    tag_ratio=0.1)
data_root = 'data/coco_stuff164k'
test_dataloader = dict(
    dataset=dict(
        type='COCOStuffMultiLabelDataset',
        data_root=data_root,
        ann_file='val_cls.txt',       # TagCLIP's imageset/cocostuff/val.txt (182-id space)
        data_prefix=dict(img_path='images/val2017')))
test_evaluator = [
    dict(type='TaggingMetric', ratio=0.1, thr=0.5),
    dict(type='TagFileWriter', out_file='work_dirs/tags/cocostuff_val.txt',
         scores_file='work_dirs/tags/cocostuff_val.scores.jsonl'),
]

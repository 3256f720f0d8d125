# COCO2014 val with at least one annotation: 40137 images, 80 classes, labels
# from the instances json.
_base_ = ['./tagging_pipeline.py']
data_root = 'data/coco'
test_dataloader = dict(
    dataset=dict(
        type='COCOMultiLabelDataset',
        data_root=data_root,
        ann_file='annotations/instances_val2014.json',
        data_prefix=dict(img_path='val2014')))
test_evaluator = [
    dict(type='TaggingMetric', ratio=0.5, thr=0.5),
    dict(type='TagFileWriter', out_file='work_dirs/tags/coco14_val.txt',
         scores_file='work_dirs/tags/coco14_val.scores.jsonl'),
]

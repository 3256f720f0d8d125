# COCO2014 train (82081 images with annotations): tags for pseudo labels.
_base_ = ['./coco14_val_cls.py']
test_dataloader = dict(
    dataset=dict(ann_file='annotations/instances_train2014.json',
                 data_prefix=dict(img_path='train2014')))
test_evaluator = [
    dict(type='TaggingMetric', ratio=0.5, thr=0.5),
    dict(type='TagFileWriter', out_file='work_dirs/tags/coco14_train.txt',
         scores_file='work_dirs/tags/coco14_train.scores.jsonl'),
]

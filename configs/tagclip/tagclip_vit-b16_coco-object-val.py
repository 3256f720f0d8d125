# TagCLIP tags for COCO val2017 (4952 images with labels), the input of the
# CLS-SEG evaluation on COCO-object (81 classes).
_base_ = ['./tagclip_vit-b16_coco14-val.py']
test_dataloader = dict(
    dataset=dict(ann_file='annotations/instances_val2017.json',
                 data_prefix=dict(img_path='val2017')))
test_evaluator = [
    dict(type='TaggingMetric', ratio=0.5, thr=0.5),
    dict(type='TagFileWriter', out_file='work_dirs/tags/coco17_val.txt',
         scores_file='work_dirs/tags/coco17_val.scores.jsonl'),
]

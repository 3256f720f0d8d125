# TagCLIP tags for VOC2012 val (1449 images), the input of the CLS-SEG
# evaluation configs/pseudo_labelers/clip-es_vit-b16_voc12-val_tagclip-tags.py.
_base_ = ['./tagclip_vit-b16_voc12-trainaug.py']
test_dataloader = dict(dataset=dict(ann_file='val_cls.txt'))
test_evaluator = [
    dict(type='TaggingMetric', ratio=0.5, thr=0.5),
    dict(type='TagFileWriter', out_file='work_dirs/tags/voc12_val.txt',
         scores_file='work_dirs/tags/voc12_val.scores.jsonl'),
]

# VOC2007 test, 4952 images, 20 classes. ann_file is TagCLIP's list
# (imageset/voc2007/test_cls.txt: "image_id idx idx ..."), placed under data_root.
_base_ = ['./tagging_pipeline.py']
data_root = 'data/VOCdevkit/VOC2007'
test_dataloader = dict(
    dataset=dict(
        type='VOCMultiLabelDataset',
        data_root=data_root,
        ann_file='test_cls.txt'))
test_evaluator = [
    dict(type='TaggingMetric', ratio=0.5, thr=0.5),
    dict(type='TagFileWriter', out_file='work_dirs/tags/voc07_test.txt',
         scores_file='work_dirs/tags/voc07_test.scores.jsonl'),
]

# VOC2012 images listed by id (train_aug: 10582, val: 1449) with image-level
# labels in the "image_id idx idx ..." format (TagCLIP's imageset/voc2012/*.txt).
# Used to tag the images whose pseudo masks are generated next.
_base_ = ['./tagging_pipeline.py']
data_root = 'data/VOCdevkit/VOC2012'
test_dataloader = dict(
    dataset=dict(
        type='VOCMultiLabelDataset',
        data_root=data_root,
        ann_file='train_aug_cls.txt'))
test_evaluator = [
    dict(type='TaggingMetric', ratio=0.5, thr=0.5),
    dict(type='TagFileWriter', out_file='work_dirs/tags/voc12_train_aug.txt',
         scores_file='work_dirs/tags/voc12_train_aug.scores.jsonl'),
]

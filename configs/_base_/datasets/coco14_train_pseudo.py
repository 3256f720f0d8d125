# COCO2014 train (82081 images with labels), 81-class pseudo masks for training.
_base_ = ['./coco-object_val_pseudo.py']
test_dataloader = dict(
    dataset=dict(
        ann_file='train2014_ids.txt',
        data_prefix=dict(img_path='train2014', seg_map_path='SegmentationClass/train2014'),
        tags_file='work_dirs/tags/coco14_train.txt'))

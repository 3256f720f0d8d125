# VOC2012 val (1449 images, 21 classes) with tags from a tags file, GT masks for
# the CLS-SEG mIoU.
_base_ = ['./pseudo_label_pipeline.py']
data_root = 'data/VOCdevkit/VOC2012'
test_dataloader = dict(
    dataset=dict(
        type='VOCTaggedSegDataset',
        data_root=data_root,
        ann_file='ImageSets/Segmentation/val.txt',
        data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
        tag_source='file',
        tags_file='work_dirs/tags/voc12_val.txt'))
test_evaluator = [
    dict(type='CLSSegIoUMetric'),
    dict(type='PseudoLabelWriter', out_dir={{_base_.pseudo_label_dir}}, palette='voc'),
]

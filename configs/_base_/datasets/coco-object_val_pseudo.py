# COCO val2017 as COCO-object (4952 images with labels, 81 classes: background +
# 80 things), masks as PNGs 0..80 (TagCLIP/CLIP-ES's processed
# SegmentationClass), tags from a tags file.
_base_ = ['./pseudo_label_pipeline.py']
data_root = 'data/coco'
test_dataloader = dict(
    dataset=dict(
        type='COCOObjectTaggedSegDataset',
        data_root=data_root,
        ann_file='val2017_ids.txt',
        data_prefix=dict(img_path='val2017', seg_map_path='SegmentationClass/val2017'),
        tag_source='file',
        tags_file='work_dirs/tags/coco17_val.txt'))
test_evaluator = [
    dict(type='CLSSegIoUMetric'),
    dict(type='PseudoLabelWriter', out_dir={{_base_.pseudo_label_dir}}, palette='dataset'),
]

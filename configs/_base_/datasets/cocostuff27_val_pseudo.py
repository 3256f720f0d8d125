# COCO-Stuff val (4172 images): official 182-id masks mapped to the 27 coarse
# classes on load; tags index the 171 fine classes.
_base_ = ['./pseudo_label_pipeline.py']
data_root = 'data/coco_stuff164k'
test_dataloader = dict(
    dataset=dict(
        type='COCOStuff27TaggedSegDataset',
        data_root=data_root,
        ann_file='val_ids.txt',
        data_prefix=dict(img_path='images/val2017', seg_map_path='annotations/val2017'),
        tag_source='file',
        tags_file='work_dirs/tags/cocostuff_val.txt'))
test_evaluator = [
    # Predictions are 171-class indices; GT is already 27-class.
    dict(type='CLSSegIoUMetric', pred_label_map='cocostuff171_to_27'),
    dict(type='PseudoLabelWriter', out_dir={{_base_.pseudo_label_dir}}, palette='voc'),
]

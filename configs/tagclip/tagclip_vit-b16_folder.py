# TagCLIP on any folder of images with any vocabulary; an optional label file
# ("image_id idx idx ...") enables mAP/F1.
#   python tools/test.py configs/tagclip/tagclip_vit-b16_folder.py \
#       --data-root my_photos --classes my_classes.txt
# (my_classes.txt: one class per line, e.g. "espresso cup"; synonyms "person, people").
# Photos are turned upright (EXIF orientation), as in the upright_* pseudo-label
# and training pipelines (README.md, "Image orientation").
# A killed run started again with the same settings resumes from the journals
# next to the tags file (see ../_base_/datasets/tagging_pipeline.py).
_base_ = [
    '../_base_/models/tagclip_vit-b16.py', '../_base_/datasets/tagging_pipeline.py',
    '../_base_/default_runtime_training_free.py'
]
model = dict(background_words='voc')
test_dataloader = dict(
    dataset=dict(
        type='MultiLabelImageFolder',
        data_root='demo/images',
        ann_file='',
        metainfo=dict(classes=('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car',
                               'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike',
                               'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor')),
        test_mode=True,
        pipeline=[
            dict(type='SkipTagged',
                 transforms=[
                     dict(type='LoadImageRobust', on_error='skip', exif_transpose=True),
                     dict(type='ResizeToPatchMultiple', patch_size=16, max_tokens=4096),
                 ]),
            dict(type='mmpretrain.PackInputs', meta_keys={{_base_.tag_meta_keys}}),
        ]))
test_evaluator = [
    dict(type='TagFileWriter', out_file='work_dirs/tags/folder.txt',
         scores_file='work_dirs/tags/folder.scores.jsonl'),
]

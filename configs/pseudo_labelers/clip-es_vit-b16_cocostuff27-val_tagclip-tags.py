# CLS-SEG on COCO-Stuff-27 val. Paper: 30.1 mIoU (no CRF). No background
# channel: labels are the argmax over the tag maps (171 classes), mapped to 27
# for evaluation; the CAM softmax competitor is the word 'background'. Thing
# classes use CLIP-ES's CAM-stage wording ('cocostuff-cam': COCO's renames plus
# airplane -> aeroplane, tv -> tvmonitor screen); stuff names are unchanged.
_base_ = [
    '../_base_/models/clip-es_vit-b16.py', '../_base_/datasets/cocostuff27_val_pseudo.py',
    '../_base_/default_runtime_training_free.py'
]
model = dict(
    class_names='cocostuff-cam',
    background_words='cocostuff-cam',
    caa_layers=(4, 5, 6, 7, 8, 9, 10, 11),
    caa_box_thr=0.7,
    with_background=False)
test_dataloader = dict(dataset=dict(tags_index_map='cocostuff182_to_171'))

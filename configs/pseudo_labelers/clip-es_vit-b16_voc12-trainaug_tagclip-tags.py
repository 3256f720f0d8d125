# Pseudo masks on VOC2012 train_aug (10582 images) from TagCLIP tags, for
# configs/deeplab/. CRF with the confidence-ignore rule (max marginal < 0.95 ->
# 255), as CLIP-ES does for training masks. Needs the crf extra.
#   python tools/test.py configs/tagclip/tagclip_vit-b16_voc12-trainaug.py
#   python tools/generate_pseudo_labels.py THIS_CONFIG --out work_dirs/pseudo_labels/voc12_train_aug
# The SBD-augmented GT (SegmentationClassAug) only serves to report the masks'
# mIoU; without it, drop seg_map_path from data_prefix and the IoU metric
# (LoadOptionalAnnotations then loads nothing).
_base_ = ['./clip-es_vit-b16_voc12-val_tagclip-tags_crf.py']
model = dict(crf=dict(confidence_thr=0.95))
test_dataloader = dict(
    dataset=dict(
        ann_file='ImageSets/Segmentation/trainaug.txt',
        data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassAug'),
        tags_file='work_dirs/tags/voc12_train_aug.txt'))

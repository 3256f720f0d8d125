# The CLIP-ES protocol: ground-truth image labels instead of TagCLIP tags, on
# VOC2012 train (1464 images). CLIP-ES reports 70.8 mIoU (75.0 with CRF).
# CAA layers 5-12 as in the original CLIP-ES VOC script.
_base_ = ['./clip-es_vit-b16_voc12-val_tagclip-tags.py']
model = dict(caa_layers=(4, 5, 6, 7, 8, 9, 10, 11))
test_dataloader = dict(
    dataset=dict(
        ann_file='ImageSets/Segmentation/train.txt',
        tag_source='gt',
        tags_file=''))

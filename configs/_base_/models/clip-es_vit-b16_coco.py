# CLIP-ES pseudo-labeler, COCO-object setting of TagCLIP's copy (docs/method.md, "Class-aware
# attention affinity (CAA)"):
# CLIP-ES's COCO class names, COCO background words, CAA over blocks 5-12 and
# a box threshold of 0.7.
_base_ = ['./clip-es_vit-b16.py']
model = dict(
    class_names='coco-cam',
    background_words='coco',
    caa_layers=(4, 5, 6, 7, 8, 9, 10, 11),
    caa_box_thr=0.7)

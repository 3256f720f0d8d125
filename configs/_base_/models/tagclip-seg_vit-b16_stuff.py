# TagCLIPSegmentor for stuff-and-things vocabularies without a background
# class (COCO-Stuff-171, Context59, ADE20K, Cityscapes): the paper's
# COCO-Stuff setting. No background channel: the label is the argmax over the
# tag maps; 'background' is only a softmax competitor of the CAMs.
_base_ = ['./tagclip-seg_vit-b16.py']
model = dict(
    with_background=False,
    tagger=dict(background_words='cocostuff', avg_layers=tuple(range(11)), cwr_ratio=0.1,
                tag_ratio=0.1),
    labeler=dict(background_words='cocostuff-cam', caa_layers=(4, 5, 6, 7, 8, 9, 10, 11),
                 caa_box_thr=0.7))

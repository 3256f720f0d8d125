# CLS-SEG on VOC2012 val with dense CRF (needs the crf extra). Paper: 68.7 mIoU.
_base_ = ['./clip-es_vit-b16_voc12-val_tagclip-tags.py']
# Dense CRF of CLIP-ES (docs/method.md, "Dense CRF (optional)").
model = dict(
    crf=dict(
        iterations=10,
        gaussian_sxy=1,
        gaussian_compat=3,
        bilateral_sxy=67,
        bilateral_srgb=3,
        bilateral_compat=4,
        confidence_thr=None,       # 0.95 for training masks (low confidence -> 255)
        # The bilateral image follows model.quirks ('reference': the wrapped
        # mean-subtracted BGR image, docs/modes.md).
        # CRF worker processes: 0 runs the CRF in the forward, image after image;
        # N > 0 runs the images of each batch (test_dataloader.batch_size, 4) in
        # N processes, alongside the batch's CAMs (same masks; about one per
        # free CPU core, see docs/performance.md).
        workers=0))
# The CRF's bilateral term needs the original image.
test_dataloader = dict(dataset=dict(pipeline={{_base_.crf_pseudo_label_pipeline}}))

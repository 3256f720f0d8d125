# VOC21 with CLIP-ES's dense CRF on the final CAMs (needs the crf extra,
# pydensecrf). The CRF reads the original RGB image from the sample.
_base_ = ['./tagclip_vit-b16_voc21.py']
model = dict(
    data_preprocessor=dict(bgr_to_rgb=False),   # LoadImageRobust yields RGB
    crf=dict(
        _delete_=True,             # the base has crf=None
        iterations=10,
        gaussian_sxy=1,
        gaussian_compat=3,
        bilateral_sxy=67,
        bilateral_srgb=3,
        bilateral_compat=4,
        confidence_thr=None))  # image: the reference's wrapped BGR (model.quirks)
test_dataloader = dict(
    dataset=dict(pipeline=_base_.open_vocab_crf_pipelines[_base_.open_vocab_benchmark]))

"""Dense CRF post-processing (optional extra: pydensecrf2)."""
import numpy as np
import pytest
import torch

from mmseg.structures import SegDataSample

pytest.importorskip('pydensecrf')

from tagclip_mmseg.models.labelers import DenseCRF, crf_reference_image  # noqa: E402


def test_reference_image_wraps_like_uint8_cast():
    rgb = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)
    out = crf_reference_image(rgb)
    # BGR minus (104.008, 116.669, 122.675), truncated, modulo 256
    assert out[0, 0].tolist() == [(-104) % 256, (-116) % 256, (-122) % 256]
    assert out[0, 1].tolist() == [150, 138, 132]


def two_region_case():
    """Left half red, right half blue; probabilities slightly favour the truth
    but are noisy."""
    h, w = 24, 32
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, :16] = (200, 30, 30)
    rgb[:, 16:] = (30, 30, 200)
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(2, h, w, generator=gen) * 0.5
    probs[0, :, :16] += 0.3
    probs[1, :, 16:] += 0.3
    return probs, rgb


@pytest.mark.parametrize('image_mode', ['faithful', 'clean'])
def test_crf_cleans_noisy_labels(image_mode):
    probs, rgb = two_region_case()
    crf = DenseCRF(image_mode=image_mode)
    sample = SegDataSample(metainfo=dict(ori_img=rgb))
    idx = crf(probs, sample)
    truth = torch.zeros(24, 32, dtype=torch.long)
    truth[:, 16:] = 1
    noisy_acc = (probs.argmax(0) == truth).float().mean()
    assert (idx == truth).float().mean() >= noisy_acc
    assert idx.shape == (24, 32)


def test_confidence_ignore_and_errors():
    probs, rgb = two_region_case()
    sample = SegDataSample(metainfo=dict(ori_img=rgb))
    strict = DenseCRF(confidence_thr=1.01)(probs, sample)
    assert (strict == -1).all()
    with pytest.raises(KeyError, match='ori_img'):
        DenseCRF()(probs, SegDataSample())
    with pytest.raises(ValueError, match='image_mode'):
        DenseCRF(image_mode='bgr')


def test_labeler_with_crf_marks_ignore(tiny_clip_path, tmp_path):
    from tagclip_mmseg.models.labelers import CLIPESPseudoLabeler
    model = CLIPESPseudoLabeler(clip=dict(checkpoint=tiny_clip_path), class_names=['cat', 'dog'],
                                background_words=['sky'], caa_layers=(0, 1, 2),
                                text_cache_dir=str(tmp_path), crf=dict(confidence_thr=1.01))
    rgb = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    s = SegDataSample(metainfo=dict(tags=[0, 1], ori_shape=(30, 40), ori_img=rgb))
    out = model.predict([torch.randn(3, 32, 48)], [s])[0].pred_sem_seg.data
    assert out.shape == (1, 30, 40)
    assert set(out.unique().tolist()) <= {0, 1, 2, 255}
    assert (out == 255).all()  # nothing reaches a marginal of 1.01: all ignored

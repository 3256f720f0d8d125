"""CLIP-ES pseudo-labeller against a per-tag loop implementation of the spec.

``reference_cams`` follows spec section 6 literally: one backward pass per tag,
OpenCV contours for the box of each tag, the affinity applied tag by tag, and
``F.interpolate`` to the original size.
"""
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.structures import PixelData

from mmseg.structures import SegDataSample

FG = ['cat', 'dog', 'person', 'car', 'tree house']
BG = ['ground', 'sky']


def box_reference(cam: np.ndarray, ratio: float, clamp: bool) -> np.ndarray:
    q = (cam * 255).astype(np.uint8)
    fg = q > int(ratio * q.max())
    h, w = cam.shape
    box = np.zeros((h, w), np.float32)
    contours, _ = cv2.findContours(fg.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    for cnt in contours:
        x, y, bw, bh = cv2.boundingRect(cnt)
        x2, y2 = x + bw, y + bh
        if clamp:
            x2, y2 = min(x2, w - 1), min(y2, h - 1)
        box[y:y2, x:x2] = 1
    return box


def reference_cams(model, image: torch.Tensor, tags, ori_hw, faithful: bool):
    """Spec 6.1-6.4 for one image, one tag at a time."""
    vit = model.clip.visual
    last = vit.num_layers - 1
    text = model.text_embeddings(model.class_names + model.background_words, model.templates)
    sel = text[list(tags) + list(range(model.num_classes, text.shape[0]))]
    with torch.no_grad():
        out = vit(image[None], return_attn=True, stop_before=last)
    maps = [a[0, 1:, 1:] for a in out.attn_maps]
    hp, wp = out.grid_hw
    blk = vit.transformer.resblocks[last]
    cams, last_map = [], None
    for k in range(len(tags)):
        with torch.enable_grad():
            g = blk.ln_1(out.hidden).detach().requires_grad_(True)
            y, w = blk.forward_from_normed(out.hidden, g, need_weights=True)
            f = vit.ln_post(y[:, 1:]).mean(dim=1) @ vit.proj
            probs = (100 * F.normalize(f, dim=-1) @ sel.t()).softmax(dim=-1)
            probs[0, k].backward()
        last_map = w[0, 1:, 1:].detach()
        act, grad = g.detach()[0, 1:], g.grad[0, 1:]
        cam = F.relu(act @ grad.mean(dim=0))
        cam = cam - cam.min()
        cams.append(cam / (cam.max() + 1e-7))
    all_maps = maps + [last_map]
    avg = sum(all_maps[i] for i in model.caa_layers) / len(model.caa_layers)
    t = avg.clone()
    for _ in range(3):
        t = t / t.sum(dim=0, keepdim=True)
        t = t / t.sum(dim=1, keepdim=True)
    t = (t + t.t()) / 2
    t = t @ t
    refined = []
    for cam in cams:
        box = torch.from_numpy(
            box_reference(cam.view(hp, wp).numpy(), model.caa_box_thr, faithful)).flatten()
        r = (t * box[None, :]) @ cam
        r = r - r.min()
        r = r / (r.max() + 1e-7)
        up = F.interpolate(r.view(1, 1, hp, wp), size=ori_hw, mode='bilinear',
                           align_corners=False)[0, 0]
        refined.append(up.half().float() if faithful else up)
    refined = torch.stack(refined)
    bg = 1 - refined.max(dim=0, keepdim=True).values
    idx = torch.cat([bg, refined]).argmax(dim=0)
    label = torch.tensor([0] + [c + 1 for c in tags])[idx]
    return refined, label


def build_labeler(ckpt, mode, tmp_path, **kw):
    from tagclip_mmseg.models.labelers import CLIPESPseudoLabeler
    return CLIPESPseudoLabeler(
        clip=dict(checkpoint=ckpt),
        class_names=FG,
        background_words=BG,
        caa_layers=kw.pop('caa_layers', (0, 1, 2)),
        mode=mode,
        text_cache_dir=str(tmp_path / 'cache'),
        return_cams=True,
        **kw).eval()


def make_samples(tag_lists, ori_hw):
    samples = []
    for tags in tag_lists:
        s = SegDataSample()
        s.set_metainfo(dict(tags=tags, ori_shape=ori_hw, img_path='x.jpg'))
        samples.append(s)
    return samples


@pytest.mark.parametrize('mode', ['faithful', 'clean'])
@pytest.mark.parametrize('caa_layers', [(0, 1, 2), (1, )])
def test_labeler_matches_reference(tiny_clip_path, tmp_path, mode, caa_layers):
    model = build_labeler(tiny_clip_path, mode, tmp_path, caa_layers=caa_layers)
    torch.manual_seed(0)
    images = torch.randn(3, 3, 48, 64)
    tag_lists = [[0, 2], [4], [1, 3, 4]]
    ori_hw = (45, 70)
    samples = model.predict(list(images), make_samples(tag_lists, ori_hw))
    for i, s in enumerate(samples):
        ref_cams, ref_label = reference_cams(model, images[i], tag_lists[i], ori_hw,
                                             mode == 'faithful')
        torch.testing.assert_close(s.cams.float(), ref_cams, atol=2e-3, rtol=0)
        agree = (s.pred_sem_seg.data[0] == ref_label).float().mean()
        assert agree > 0.999, agree
        assert s.pred_sem_seg.data.shape == (1, ) + ori_hw


def test_labeler_runs_under_no_grad(tiny_clip_path, tmp_path):
    """mmengine's test loop wraps everything in no_grad; Grad-CAM must still work."""
    model = build_labeler(tiny_clip_path, 'clean', tmp_path)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        s = model.predict(list(images), make_samples([[1]], (32, 32)))[0]
    assert s.cams.float().max() > 0


def test_no_tags_gives_background(tiny_clip_path, tmp_path):
    model = build_labeler(tiny_clip_path, 'clean', tmp_path)
    samples = model.predict([torch.randn(3, 32, 48), torch.randn(3, 32, 48)],
                            make_samples([[], [2]], (30, 40)))
    assert (samples[0].pred_sem_seg.data == 0).all()
    assert set(samples[1].pred_sem_seg.data.unique().tolist()) <= {0, 3}


def test_bad_tags_raise(tiny_clip_path, tmp_path):
    model = build_labeler(tiny_clip_path, 'clean', tmp_path)
    with pytest.raises(ValueError, match='outside'):
        model.predict([torch.randn(3, 32, 32)], make_samples([[7]], (32, 32)))


def test_without_background_and_label_map(tiny_clip_path, tmp_path):
    lut = [10, 11, 12, 13, 14]
    model = build_labeler(tiny_clip_path, 'clean', tmp_path, with_background=False,
                          label_map=lut)
    s = model.predict([torch.randn(3, 32, 32)], make_samples([[1, 3]], (32, 32)))[0]
    assert set(s.pred_sem_seg.data.unique().tolist()) <= {11, 13}


def test_tagger_in_the_same_pass(tiny_clip_path, tmp_path):
    tagger = dict(type='TagCLIP', clip=dict(checkpoint=tiny_clip_path), class_names=FG,
                  background_words=BG, avg_layers=(0, 1), vote_k=2,
                  templates=('a photo of a {}.', ), text_cache_dir=str(tmp_path / 'cache'))
    model = build_labeler(tiny_clip_path, 'clean', tmp_path, tagger=tagger)
    samples = [SegDataSample(metainfo=dict(ori_shape=(32, 48))) for _ in range(2)]
    out = model.predict([torch.randn(3, 32, 48), torch.randn(3, 32, 48)], samples)
    for s in out:
        assert len(s.metainfo['tags']) >= 1
        assert isinstance(s.pred_sem_seg, PixelData)


def test_load_error_samples_are_skipped(tiny_clip_path, tmp_path):
    model = build_labeler(tiny_clip_path, 'clean', tmp_path)
    samples = make_samples([[0], [1]], (20, 20))
    samples[0].set_metainfo(dict(load_error='truncated file'))
    out = model.predict([torch.randn(3, 16, 16), torch.randn(3, 32, 32)], samples)
    assert (out[0].pred_sem_seg.data == 255).all()
    assert out[1].pred_sem_seg.data.shape == (1, 20, 20)

"""Positional-embedding resampling and its fp16 rounding.

Checked against numbers computed without the ViT code.

The reference stores the resampled embedding as a half-precision parameter
(docs/method.md, "Numeric precision"), which rounds it to fp16 even in an fp32 model;
``quirks.pos_embed_fp16`` reproduces that. Here the expected values come from
numpy: bilinear weights with ``align_corners=False`` written out from the
formula (by hand for a 2 x 2 grid), rounded through ``numpy.float16``.
"""
import numpy as np
import pytest
import torch

from tagclip_mmseg.models.clip import resample_pos_embed


def bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) interpolation matrix of ``align_corners=False``.

    Output ``i`` samples ``src = (i + 0.5) * n_in / n_out - 0.5``, clamped at 0, between
    ``floor(src)`` and the next index (clamped at ``n_in - 1``).
    """
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = int(np.floor(src))
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0
        m[i, i0] += 1 - frac
        m[i, i1] += frac
    return m


def numpy_resample(pos: np.ndarray, hw) -> np.ndarray:
    """(1 + g*g, D) -> (1 + h*w, D) in float64.

    [CLS] row kept, grid resampled separably (rows, then columns).
    """
    g = int(round(np.sqrt(pos.shape[0] - 1)))
    grid = pos[1:].astype(np.float64).reshape(g, g, -1)
    out = np.einsum('hi,wj,ijd->hwd', bilinear_weights(g, hw[0]), bilinear_weights(g, hw[1]),
                    grid)
    return np.concatenate([pos[:1].astype(np.float64), out.reshape(hw[0] * hw[1], -1)])


def fp16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float64)


def test_two_by_two_to_three_by_three_by_hand():
    """2 -> 3 samples at -1/6 (clamped to 0), 1/2 and 7/6 (clamped to 1).

    The outer rows/columns copy the grid, the middle ones average it.
    """
    a, b, c, d = 0.1, 0.2, 0.3, 0.7
    cls = 0.123
    pos = torch.tensor([[cls], [a], [b], [c], [d]])
    by_hand = np.array([cls,
                        a, (a + b) / 2, b,
                        (a + c) / 2, (a + b + c + d) / 4, (b + d) / 2,
                        c, (c + d) / 2, d])[:, None]
    np.testing.assert_allclose(numpy_resample(pos.numpy(), (3, 3)), by_hand, atol=1e-7)
    out = resample_pos_embed(pos, (3, 3))
    np.testing.assert_allclose(out.numpy(), by_hand, atol=1e-7, rtol=0)
    rounded = resample_pos_embed(pos, (3, 3), round_to_fp16=True)
    # every row, [CLS] included, is rounded to the nearest fp16 value
    np.testing.assert_array_equal(rounded.numpy().astype(np.float64), fp16(by_hand))
    assert not np.array_equal(fp16(by_hand), by_hand.astype(np.float32).astype(np.float64))


def test_resample_matches_numpy_weights_and_rounds_to_fp16():
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(1 + 3 * 3, 6)).astype(np.float32)
    expected = numpy_resample(pos, (2, 5))
    out = resample_pos_embed(torch.from_numpy(pos), (2, 5)).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0)
    rounded = resample_pos_embed(torch.from_numpy(pos), (2, 5), round_to_fp16=True).numpy()
    assert rounded.dtype == np.float32
    # representable in fp16, and the fp16 value nearest the exact result (a
    # float32 result within 1e-6 of a rounding midpoint could round the other
    # way: allow one fp16 step there, never more)
    np.testing.assert_array_equal(fp16(rounded), rounded)
    step = np.spacing(np.abs(expected).astype(np.float16)).astype(np.float64)
    exact = rounded == fp16(expected)
    near_midpoint = np.abs(np.abs(expected - fp16(expected)) - step / 2) < 1e-6
    assert (exact | near_midpoint).all()
    assert not np.array_equal(rounded, out)  # the rounding did something


def embedding_seen_by_ln_pre(model, hw) -> np.ndarray:
    """The positional embedding a model's own forward adds for an (h, w)-patch input.

    With a zero image the bias-free patch convolution gives zeros, so the patch rows entering
    ``ln_pre`` are the embedding itself.
    """
    from tagclip_mmseg.models.taggers import TagCLIP
    vit = model.clip.visual
    seen = []
    handle = vit.ln_pre.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    p = vit.patch_size
    images = torch.zeros(1, 3, hw[0] * p, hw[1] * p)
    try:
        if isinstance(model, TagCLIP):
            model.coarse_pass(images, model.classifier())
        else:
            model.compute_cams(images, [[0]])
    finally:
        handle.remove()
    return seen[0][0, 1:].double().detach().numpy()


@pytest.mark.parametrize('model_type', ['TagCLIP', 'CLIPESPseudoLabeler'])
@pytest.mark.parametrize('quirks', ['reference', 'fixed', dict(pos_embed_fp16=False),
                                    dict(preset='fixed', pos_embed_fp16=True)],
                         ids=['reference', 'fixed', 'reference-no-fp16', 'fixed-fp16'])
def test_models_round_the_embedding_with_the_quirk_only(tiny_clip_path, tmp_path, model_type,
                                                        quirks):
    from tagclip_mmseg.models.pseudo_labelers import CLIPESPseudoLabeler
    from tagclip_mmseg.models.taggers import TagCLIP
    layers = dict(vote_k=2, avg_layers=(0, 1)) if model_type == 'TagCLIP' else dict(
        caa_layers=(0, 1, 2))
    model = dict(TagCLIP=TagCLIP, CLIPESPseudoLabeler=CLIPESPseudoLabeler)[model_type](
        clip=dict(checkpoint=tiny_clip_path), class_names=['cat', 'dog'], quirks=quirks,
        text_cache_dir=str(tmp_path), **layers).eval()
    vit = model.clip.visual
    assert vit.conv1.bias is None
    hw = (3, 5)  # the tiny CLIP's grid is 4 x 4
    pos = vit.positional_embedding.detach().numpy()
    expected = numpy_resample(pos, hw)[1:]
    got = embedding_seen_by_ln_pre(model, hw)
    if model.quirks.pos_embed_fp16:
        np.testing.assert_array_equal(fp16(got), got)
        # nearest fp16 value: within half an fp16 step (plus fp32 noise)
        half_step = np.spacing(np.abs(expected).astype(np.float16)) / 2
        assert (np.abs(got - expected) <= half_step + 1e-6).all()
    else:
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
        assert not np.array_equal(fp16(got), got)


def test_one_clip_shared_by_a_reference_and_a_fixed_model(tiny_clip_path, tmp_path):
    """Building a fixed model on a reference model's CLIP changes nothing for the reference one.

    The rounding is a per-call argument, not module state.
    """
    from tagclip_mmseg.models.pseudo_labelers import CLIPESPseudoLabeler
    from tagclip_mmseg.models.taggers import TagCLIP
    tagger = TagCLIP(clip=dict(checkpoint=tiny_clip_path), class_names=['cat', 'dog'],
                     quirks='reference', vote_k=2, avg_layers=(0, 1),
                     text_cache_dir=str(tmp_path)).eval()
    hw = (3, 5)
    before = embedding_seen_by_ln_pre(tagger, hw)
    labeler = CLIPESPseudoLabeler(clip=tagger.clip, class_names=['cat', 'dog'], quirks='fixed',
                                  caa_layers=(0, 1, 2), text_cache_dir=str(tmp_path)).eval()
    assert labeler.clip is tagger.clip
    after = embedding_seen_by_ln_pre(tagger, hw)
    np.testing.assert_array_equal(after, before)
    np.testing.assert_array_equal(fp16(after), after)  # still rounded
    clean = embedding_seen_by_ln_pre(labeler, hw)
    assert not np.array_equal(fp16(clean), clean)  # the fixed model's own calls are not

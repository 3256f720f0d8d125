"""The CLIP model's hooks: attention maps, masks, resampling, early stop."""
import pytest
import torch
import torch.nn.functional as F

from tagclip_mmseg.models.clip import resample_pos_embed, tokenize

ATOL = 1e-5


@pytest.fixture
def images():
    torch.manual_seed(2)
    return torch.randn(2, 3, 64, 64)


def self_only_mask(num_tokens: int, off_diagonal: float) -> torch.Tensor:
    mask = torch.full((num_tokens, num_tokens), off_diagonal)
    mask.fill_diagonal_(0.0)
    return mask


def test_attention_rows_sum_to_one(tiny_clip, images):
    with torch.no_grad():
        out = tiny_clip.visual(images, return_attn=True)
    assert len(out.attn_maps) == tiny_clip.visual.num_layers
    L = 1 + 4 * 4
    for attn in out.attn_maps:
        assert attn.shape == (2, L, L)
        torch.testing.assert_close(attn.sum(-1), torch.ones(2, L), atol=ATOL, rtol=0)
        assert (attn >= 0).all()


@pytest.mark.parametrize('off_diagonal', [-100.0, float('-inf')])
def test_self_only_last_layer_is_the_value_path(tiny_clip, images, off_diagonal):
    visual = tiny_clip.visual
    last = visual.num_layers - 1
    mask = self_only_mask(17, off_diagonal)
    with torch.no_grad():
        hidden = visual(images, stop_before=last).hidden
        block = visual.transformer.resblocks[last]
        normed = block.ln_1(hidden)
        attn_out, _ = block.attn(normed, mask)
        d = block.attn.embed_dim
        w_v = block.attn.in_proj_weight[2 * d:]
        b_v = block.attn.in_proj_bias[2 * d:]
        value_path = block.attn.out_proj(F.linear(normed, w_v, b_v))
        torch.testing.assert_close(attn_out, value_path, atol=ATOL, rtol=0)

        # and the whole forward uses it, residual and MLP kept
        x = hidden + value_path
        x = x + block.mlp(block.ln_2(x))
        expected = visual.head(x)
        tokens = visual(images, attn_masks={-1: mask}).tokens
        torch.testing.assert_close(tokens, expected, atol=ATOL, rtol=0)


def test_weights_before_mask_semantics(tiny_clip, images):
    visual = tiny_clip.visual
    mask = self_only_mask(17, float('-inf'))
    with torch.no_grad():
        plain = visual(images, return_attn=True).attn_maps[-1]
        before = visual(images, attn_masks={-1: mask}, return_attn=True,
                        weights_before_mask=True).attn_maps[-1]
        after = visual(images, attn_masks={-1: mask}, return_attn=True,
                       weights_before_mask=False).attn_maps[-1]
    # TagCLIP's vote uses the unmasked q.k attention of the masked layer
    torch.testing.assert_close(before, plain, atol=ATOL, rtol=0)
    torch.testing.assert_close(after, torch.eye(17).expand(2, 17, 17), atol=ATOL, rtol=0)


def test_return_attn_matches_callback(tiny_clip, images):
    seen = []
    with torch.no_grad():
        out = tiny_clip.visual(images, return_attn=True,
                               attn_callback=lambda i, a: seen.append((i, a.clone())))
    assert [i for i, _ in seen] == list(range(tiny_clip.visual.num_layers))
    for (_, a), b in zip(seen, out.attn_maps):
        assert torch.equal(a, b)


def test_fast_path_equals_weights_path(tiny_clip, images):
    mask = self_only_mask(17, -100.0)
    with torch.no_grad():
        for masks in (None, {-1: mask}):
            fast = tiny_clip.visual(images, attn_masks=masks).tokens
            slow = tiny_clip.visual(images, attn_masks=masks, return_attn=True).tokens
            torch.testing.assert_close(fast, slow, atol=ATOL, rtol=0)


def test_stop_before_then_rest_of_blocks(tiny_clip, images):
    visual = tiny_clip.visual
    with torch.no_grad():
        full = visual(images).tokens
        for stop in (0, 1, visual.num_layers - 1, -1):
            out = visual(images, stop_before=stop)
            assert out.tokens is None and out.hidden is not None
            x = out.hidden
            for block in visual.transformer.resblocks[stop % visual.num_layers:]:
                x, _ = block(x)
            torch.testing.assert_close(visual.head(x), full, atol=ATOL, rtol=0)


def test_grad_through_last_block_from_normed(tiny_clip, images):
    """Grad-CAM's use: the last block's ln_1 output as a leaf."""
    visual = tiny_clip.visual
    with torch.no_grad():
        hidden = visual(images, stop_before=-1).hidden
    block = visual.transformer.resblocks[-1]
    normed = block.ln_1(hidden).detach().requires_grad_(True)
    x, _ = block.forward_from_normed(hidden, normed)
    visual.head(x)[:, 0].sum().backward()
    assert normed.grad is not None and normed.grad.abs().sum() > 0


def test_resample_pos_embed():
    torch.manual_seed(0)
    pos = torch.randn(1 + 14 * 14, 8)
    assert resample_pos_embed(pos, (14, 14)) is pos  # 224 input: untouched
    out = resample_pos_embed(pos, (10, 21))
    assert out.shape == (1 + 10 * 21, 8)
    assert torch.equal(out[0], pos[0])  # [CLS] row kept
    const = torch.cat([pos[:1], torch.full((196, 8), 0.5)])
    torch.testing.assert_close(resample_pos_embed(const, (7, 30))[1:], torch.full((210, 8), 0.5))
    rounded = resample_pos_embed(pos, (10, 21), round_to_fp16=True)
    assert torch.equal(rounded, out.half().float())
    with pytest.raises(ValueError, match='square'):
        resample_pos_embed(torch.zeros(1 + 15, 8), (3, 5))


def test_non_square_input(tiny_clip):
    with torch.no_grad():
        out = tiny_clip.visual(torch.randn(1, 3, 48, 80), return_attn=True)
    assert out.grid_hw == (3, 5)
    assert out.tokens.shape == (1, 1 + 15, 32)
    assert out.attn_maps[0].shape == (1, 16, 16)
    with pytest.raises(ValueError, match='multiple of the patch size'):
        tiny_clip.visual(torch.randn(1, 3, 50, 64))


def test_encode_text_pools_at_eot_and_is_causal(tiny_clip):
    tokens = tokenize(['a photo of a cat.', 'sky'])
    with torch.no_grad():
        full = tiny_clip.encode_text(tokens)
        # padding after EOT cannot influence the EOT feature (causal mask)
        short = tiny_clip.encode_text(tokens[:, :10])
    torch.testing.assert_close(full, short, atol=ATOL, rtol=0)
    assert full.shape == (2, 32)


@pytest.mark.parametrize('mask_kind', ['none', 'shared', 'per_image_cls_row'])
def test_cls_only_equals_full_forward(tiny_clip, images, mask_kind):
    """The [CLS]-only last block gives the full forward's [CLS] token."""
    visual = tiny_clip.visual
    L = 17
    if mask_kind == 'none':
        masks = None
    elif mask_kind == 'shared':
        masks = {-1: self_only_mask(L, -100.0)}
    else:  # TagCLIP's CWR mask: row 0 only, a different one per image, in every layer
        mask = torch.zeros(2, 1, L, L)
        mask[:, 0, 0, 1:] = torch.where(torch.rand(2, L - 1) > 0.5, 0.0, -1000.0)
        masks = {i: mask for i in range(visual.num_layers)}
    with torch.no_grad():
        full = visual(images, attn_masks=masks).tokens
        cls = visual(images, attn_masks=masks, cls_only=True).tokens
    assert cls.shape == (2, 1, full.shape[-1])
    torch.testing.assert_close(cls, full[:, :1], atol=ATOL, rtol=0)


def test_cls_only_refuses_maps_and_early_stop(tiny_clip, images):
    visual = tiny_clip.visual
    with pytest.raises(ValueError, match='cls_only'):
        visual(images, cls_only=True, return_attn=True)
    with pytest.raises(ValueError, match='cls_only'):
        visual(images, cls_only=True, stop_before=1)
    x = torch.randn(2, 17, visual.transformer.width)
    with pytest.raises(ValueError, match='num_queries'):
        visual.transformer.resblocks[0].attn(x, need_weights=True, num_queries=1)


def test_attn_layers_selects_the_reported_maps(tiny_clip, images):
    visual = tiny_clip.visual
    seen = []
    with torch.no_grad():
        full = visual(images, return_attn=True)
        part = visual(images, return_attn=True, attn_layers=(0, -1),
                      attn_callback=lambda i, w: seen.append(i))
    assert seen == [0, visual.num_layers - 1]
    assert len(part.attn_maps) == 2
    torch.testing.assert_close(part.attn_maps[0], full.attn_maps[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(part.attn_maps[1], full.attn_maps[-1], atol=ATOL, rtol=0)
    torch.testing.assert_close(part.tokens, full.tokens, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match='attn_layers'):
        visual(images, return_attn=True, attn_layers=(visual.num_layers, ))

"""The CLIP model's hooks.

The vision tower's stages (plain, attention maps, early stop, [CLS] only), masks, resampling and the
attention helpers.
"""
import pytest
import torch
import torch.nn.functional as F

from tagclip_mmseg.models.clip import resample_pos_embed, tokenize

#: The classic CI stack (make test-classic) runs this whole file.
pytestmark = pytest.mark.classic

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
        out = tiny_clip.visual.forward_attention(images)
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
        hidden = visual.forward_until(images, last).hidden
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
        tokens = visual(images, attn_masks={-1: mask})
        torch.testing.assert_close(tokens, expected, atol=ATOL, rtol=0)


def test_weights_before_mask_semantics(tiny_clip, images):
    visual = tiny_clip.visual
    mask = self_only_mask(17, float('-inf'))
    with torch.no_grad():
        plain = visual.forward_attention(images).attn_maps[-1]
        before = visual.forward_attention(images, attn_masks={-1: mask},
                                          weights_before_mask=True).attn_maps[-1]
        after = visual.forward_attention(images, attn_masks={-1: mask},
                                         weights_before_mask=False).attn_maps[-1]
    # TagCLIP's vote uses the unmasked q.k attention of the masked layer
    torch.testing.assert_close(before, plain, atol=ATOL, rtol=0)
    torch.testing.assert_close(after, torch.eye(17).expand(2, 17, 17), atol=ATOL, rtol=0)


def test_callback_gets_the_maps_instead_of_the_list(tiny_clip, images):
    seen = []
    with torch.no_grad():
        kept = tiny_clip.visual.forward_attention(images)
        streamed = tiny_clip.visual.forward_attention(
            images, attn_callback=lambda i, a: seen.append((i, a.clone())))
    assert streamed.attn_maps == []  # streamed, not kept
    assert [i for i, _ in seen] == list(range(tiny_clip.visual.num_layers))
    for (_, a), b in zip(seen, kept.attn_maps):
        assert torch.equal(a, b)
    assert torch.equal(streamed.tokens, kept.tokens)


def test_fast_path_equals_weights_path(tiny_clip, images):
    mask = self_only_mask(17, -100.0)
    with torch.no_grad():
        for masks in (None, {-1: mask}):
            fast = tiny_clip.visual(images, attn_masks=masks)
            slow = tiny_clip.visual.forward_attention(images, attn_masks=masks).tokens
            torch.testing.assert_close(fast, slow, atol=ATOL, rtol=0)


def test_forward_until_then_rest_of_blocks(tiny_clip, images):
    """The stream entering block k, run through blocks k.. and the head, is the plain forward.

    Bit for bit: the same operations in the same order.
    """
    visual = tiny_clip.visual
    n = visual.num_layers
    with torch.no_grad():
        full = visual(images)
        for stop in (0, 1, n - 1, -1, n):
            out = visual.forward_until(images, stop)
            assert out.tokens is None and out.attn_maps == [] and out.grid_hw == (4, 4)
            x = out.hidden
            assert x.shape == (2, 17, visual.transformer.width)
            for block in visual.transformer.resblocks[stop % n if stop < n else n:]:
                x, _ = block(x)
            assert torch.equal(visual.head(x), full)
    for bad in (n + 1, -n - 1):
        with pytest.raises(ValueError, match='block'):
            visual.forward_until(images, bad)


def test_forward_until_reports_only_layers_that_run(tiny_clip, images):
    """CLIP-ES's use: affinity maps of the blocks before the last one."""
    visual = tiny_clip.visual
    seen = []
    with torch.no_grad():
        full = visual.forward_attention(images)
        out = visual.forward_until(images, -1, attn_layers=(0, -1),
                                   attn_callback=lambda i, w: seen.append((i, w)))
        kept = visual.forward_until(images, 2, attn_layers=(1, 2))
        hidden = visual.forward_until(images, -1).hidden
    assert [i for i, _ in seen] == [0]  # layer -1 is the block it stops before
    assert out.attn_maps == []
    torch.testing.assert_close(seen[0][1], full.attn_maps[0], atol=ATOL, rtol=0)
    assert len(kept.attn_maps) == 1
    torch.testing.assert_close(kept.attn_maps[0], full.attn_maps[1], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.hidden, hidden, atol=ATOL, rtol=0)


def test_grad_through_last_block_from_normed(tiny_clip, images):
    """Grad-CAM's use: the last block's ln_1 output as a leaf."""
    visual = tiny_clip.visual
    with torch.no_grad():
        hidden = visual.forward_until(images, -1).hidden
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
        out = tiny_clip.visual.forward_attention(torch.randn(1, 3, 48, 80))
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
def test_forward_cls_equals_full_masked_forward(tiny_clip, images, mask_kind):
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
        full = visual(images, attn_masks=masks)
        cls = visual.forward_cls(images, masks)
    assert cls.shape == (2, full.shape[-1])
    torch.testing.assert_close(cls, full[:, 0], atol=ATOL, rtol=0)


def test_num_queries_refuses_maps(tiny_clip):
    visual = tiny_clip.visual
    x = torch.randn(2, 17, visual.transformer.width)
    with pytest.raises(ValueError, match='num_queries'):
        visual.transformer.resblocks[0].attn(x, need_weights=True, num_queries=1)


def test_attn_layers_selects_the_reported_maps(tiny_clip, images):
    visual = tiny_clip.visual
    seen = []
    with torch.no_grad():
        plain = visual(images)
        full = visual.forward_attention(images)
        part = visual.forward_attention(images, attn_layers=(0, -1))
        visual.forward_attention(images, attn_layers=(-1, 0),
                                 attn_callback=lambda i, w: seen.append(i))
        none = visual.forward_attention(images, attn_layers=())
    assert seen == [0, visual.num_layers - 1]  # layer order, whatever the given order
    assert len(part.attn_maps) == 2 and none.attn_maps == []
    torch.testing.assert_close(part.attn_maps[0], full.attn_maps[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(part.attn_maps[1], full.attn_maps[-1], atol=ATOL, rtol=0)
    # the maps stage computes the same tokens as the plain forward
    for out in (full, part):
        torch.testing.assert_close(out.tokens, plain, atol=ATOL, rtol=0)
    assert torch.equal(none.tokens, plain)  # no maps: the very same kernels
    with pytest.raises(ValueError, match='attn_layers'):
        visual.forward_attention(images, attn_layers=(visual.num_layers, ))
    with pytest.raises(ValueError, match='attn_masks'):
        visual(images, attn_masks={-visual.num_layers - 1: torch.zeros(17, 17)})


def test_stages_round_the_embedding_per_call(tiny_clip):
    """``round_pos_embed_fp16`` is an argument of each stage, not module state.

    Alternating calls see only their own setting.
    """
    visual = tiny_clip.visual
    x = torch.randn(1, 3, 48, 80)  # 3 x 5 grid: the embedding is resampled
    with torch.no_grad():
        for rounded in (True, False, True):
            ref = visual(x, round_pos_embed_fp16=rounded)
            other = visual(x, round_pos_embed_fp16=not rounded)
            assert not torch.equal(ref, other)
            assert torch.equal(visual.forward_attention(
                x, attn_layers=(), round_pos_embed_fp16=rounded).tokens, ref)
            hidden = visual.forward_until(x, visual.num_layers,
                                          round_pos_embed_fp16=rounded).hidden
            assert torch.equal(visual.head(hidden), ref)
            torch.testing.assert_close(visual.forward_cls(x, round_pos_embed_fp16=rounded),
                                       ref[:, 0], atol=ATOL, rtol=0)
    assert not hasattr(visual, 'round_pos_embed_fp16')


def test_split_qkv_layout(tiny_clip):
    attn = tiny_clip.visual.transformer.resblocks[0].attn
    torch.manual_seed(3)
    x = torch.randn(2, 17, attn.embed_dim)
    B, L, D, H, d = 2, 17, attn.embed_dim, attn.num_heads, attn.head_dim
    with torch.no_grad():
        q, k, v = attn.split_qkv(x)
        proj = x @ attn.in_proj_weight.t() + attn.in_proj_bias
        for t, part in zip((q, k, v), proj.split(D, dim=-1)):
            assert t.shape == (B, H, L, d)
            torch.testing.assert_close(t, part.view(B, L, H, d).transpose(1, 2), atol=ATOL,
                                       rtol=0)
        q1, k1, v1 = attn.split_qkv(x, num_queries=1)
        assert q1.shape == (B, H, 1, d)
        torch.testing.assert_close(q1, q[:, :, :1], atol=ATOL, rtol=0)
        torch.testing.assert_close(k1, k, atol=ATOL, rtol=0)
        torch.testing.assert_close(v1, v, atol=ATOL, rtol=0)
        q64, _, _ = attn.split_qkv(x.double(), dtype=torch.float64)
        assert q64.dtype == torch.float64


def test_head_chunk_budget(tiny_clip):
    attn = tiny_clip.visual.transformer.resblocks[0].attn  # 2 heads
    B, L = 2, 17
    per_head = B * L * L * 4
    for budget, step in ((per_head * 2, 2), (per_head * 2 - 1, 1), (per_head * 50, 2), (1, 1)):
        attn.max_chunk_bytes = budget
        assert attn.head_chunk(B, L) == step
    attn.max_chunk_bytes = per_head * 2
    assert attn.head_chunk(B, L, itemsize=2) == 2  # counted as at least 4 bytes
    assert attn.head_chunk(B, L, itemsize=8) == 1

"""Head-chunked attention (bounded memory) equals attention over all heads."""
import pytest
import torch

from tagclip_mmseg.models.clip import CLIPAttention


@pytest.mark.parametrize('before', [True, False])
@pytest.mark.parametrize('mask_shape', [None, (9, 9), (2, 1, 9, 9), (2, 4, 9, 9)])
def test_chunked_equals_full(before, mask_shape):
    torch.manual_seed(0)
    attn = CLIPAttention(32, 4).eval()
    x = torch.randn(2, 9, 32)
    mask = None if mask_shape is None else torch.randn(mask_shape) * 3
    attn.max_chunk_bytes = 1 << 40
    full_out, full_w = attn(x, mask, need_weights=True, weights_before_mask=before)
    attn.max_chunk_bytes = 1  # one head at a time
    out, w = attn(x, mask, need_weights=True, weights_before_mask=before)
    torch.testing.assert_close(out, full_out)
    torch.testing.assert_close(w, full_w)
    fast, _ = attn(x, mask, need_weights=False)
    torch.testing.assert_close(fast, full_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 9))

"""Grad-CAM's backward through the last ViT block, batched over tags.

It re-derives the block's forward through :meth:`CLIPAttention.split_qkv` and
:meth:`CLIPAttention.head_chunk`, so it lives next to the network.
"""
import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .model import VisionTransformer

__all__ = ['LastBlockGrad']


def _layer_norm_parts(x: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    """``(x - mean) / std`` and ``1 / std`` over the last dim (LayerNorm state)."""
    mean = x.mean(dim=-1, keepdim=True)
    rstd = torch.rsqrt(x.var(dim=-1, unbiased=False, keepdim=True) + eps)
    return (x - mean) * rstd, rstd


def _layer_norm_backward(cot: Tensor, xhat: Tensor, rstd: Tensor, weight: Tensor) -> Tensor:
    """Input cotangent of ``weight * xhat + bias`` given the output's ``cot``."""
    e = cot * weight
    return rstd * (e - e.mean(dim=-1, keepdim=True) - xhat * (xhat * e).mean(dim=-1, keepdim=True))


class LastBlockGrad:
    """The last ViT block and the pooled head, with a tag-batched backward.

    Runs the block once per image in float32; :meth:`token_mean_grad` returns
    Grad-CAM's ``alpha_k = mean_n dL_k / dg_n`` for K tags without forming
    ``dL_k / dg`` (docs/implementation.md, "Grad-CAM's tag-batched backward").

    Args:
        vit: The vision transformer (its last block, ``ln_post``, ``proj``).
        hidden (Tensor): (B, L, D) residual stream entering the last block.
    """

    def __init__(self, vit: VisionTransformer, hidden: Tensor) -> None:
        blk = vit.transformer.resblocks[vit.num_layers - 1]
        attn = blk.attn
        self.attn = attn
        f32 = torch.float32
        with torch.no_grad():
            x = hidden.detach().to(f32)
            B, L, D = x.shape
            self.num_patches = L - 1
            self.w_in = attn.in_proj_weight.to(f32)
            self.w_out = attn.out_proj.weight.to(f32)
            self.w_fc = blk.mlp.c_fc.weight.to(f32)
            self.w_cp = blk.mlp.c_proj.weight.to(f32)
            self.ln_2_weight = blk.ln_2.weight.to(f32)
            self.ln_post_weight = vit.ln_post.weight.to(f32)
            self.proj = vit.proj.to(f32)
            g = blk.ln_1(x)
            self.normed = g  # Grad-CAM's activations
            self.q, self.k, self.v = attn.split_qkv(g, dtype=f32)
            self.out = F.scaled_dot_product_attention(self.q, self.k, self.v)  # (B, H, L, d)
            x1 = x + F.linear(self.out.transpose(1, 2).reshape(B, L, D), self.w_out,
                              attn.out_proj.bias.to(f32))
            self.u2hat, self.rstd2 = (t[:, 1:] for t in _layer_norm_parts(x1, blk.ln_2.eps))
            h = F.linear(blk.ln_2(x1), self.w_fc, blk.mlp.c_fc.bias.to(f32))
        with torch.enable_grad():
            h = h.requires_grad_(True)
            m = blk.mlp.gelu(h)
            (act_grad, ) = torch.autograd.grad(m, h, torch.ones_like(m))
        with torch.no_grad():
            y = x1 + F.linear(m.detach(), self.w_cp, blk.mlp.c_proj.bias.to(f32))
            self.yhat, self.rstd_post = _layer_norm_parts(y[:, 1:], vit.ln_post.eps)
            self.pooled = vit.ln_post(y[:, 1:]).mean(dim=1)
            # act'(h) * rstd_post, and the tag-independent half of the MLP
            # backward (see token_mean_grad).
            self.gain = act_grad[:, 1:] * self.rstd_post
            self.shared = (self.gain * (self.yhat @ self.w_cp)) @ self.w_fc  # (B, N, D)

    def pooled_embedding(self) -> Tensor:
        """(B, E) image embedding ``f``."""
        return self.pooled @ self.proj

    @torch.no_grad()
    def token_mean_grad(self, cot: Tensor, need_attn: bool) -> Tuple[Tensor, Optional[Tensor]]:
        """Mean over patch tokens of ``d<cot_k, f> / dg`` for K cotangents.

        Args:
            cot (Tensor): (B, K, E) cotangents on the pooled embedding; a zero
                row gives a zero result.
            need_attn (bool): Also return the head-averaged attention.

        Returns:
            tuple: ``alpha`` (B, K, D) and the (B, L, L) attention or ``None``.
        """
        B, K, _ = cot.shape
        if B != self.yhat.shape[0]:
            raise ValueError(f'cot has {B} images, the block ran on {self.yhat.shape[0]}; '
                             'give (B, K, E) cotangents')
        N = self.num_patches
        D = self.yhat.shape[-1]
        # Pooling and ln_post: every patch token's ln_post output gets the
        # cotangent w = proj c / N, so dy_n = rstd_n * (e' - c_n * yhat_n) with
        # e = gamma * w, e' = e - mean(e), c_n = <yhat_n, e> / D.
        e = (cot.to(torch.float32) @ self.proj.t()) * (self.ln_post_weight / N)  # (B, K, D)
        e = e - e.mean(dim=-1, keepdim=True)
        c = torch.einsum('bnd,bkd->bkn', self.yhat, e) / D
        dy = self.rstd_post[:, None] * (e[:, :, None] - c[..., None] * self.yhat[:, None])
        # MLP: du = (act' * (dy W_cp)) W_fc; the c_n * yhat_n part of dy is
        # shared by all tags (self.shared), the rest is a per-tag vector.
        du = (self.gain[:, None] * (e @ self.w_cp)[:, :, None]) @ self.w_fc
        du = du - c[..., None] * self.shared[:, None]
        dx1 = dy + _layer_norm_backward(du, self.u2hat[:, None], self.rstd2[:, None],
                                        self.ln_2_weight)
        H, d = self.attn.num_heads, self.attn.head_dim
        d_out = (dx1 @ self.w_out).view(B, K, N, H, d).permute(0, 3, 1, 2, 4)  # (B, H, K, N, d)
        sums, attn_sum = [], None
        for h0, h1 in self._head_chunks(B, N + 1):
            part, probs = self._attention_sums(d_out[:, h0:h1], slice(h0, h1))
            sums.append(part)
            if need_attn:
                p = probs.sum(dim=1)
                attn_sum = p if attn_sum is None else attn_sum + p
        # (B, 3, H, K, d) -> (B, K, 3D) in in_proj's (q, k, v) x head order.
        sums = torch.cat(sums, dim=2).permute(0, 3, 1, 2, 4).reshape(B, K, 3 * D)
        alpha = sums @ self.w_in / N
        return alpha, (attn_sum / H if need_attn else None)

    def _head_chunks(self, B: int, L: int) -> List[Tuple[int, int]]:
        """Head ranges within :meth:`CLIPAttention.head_chunk`'s budget."""
        H = self.attn.num_heads
        step = self.attn.head_chunk(B, L)
        return [(h0, min(H, h0 + step)) for h0 in range(0, H, step)]

    def _attention_sums(self, d_out: Tensor, heads: slice) -> Tuple[Tensor, Tensor]:
        """Patch-token sums of dq, dk, dv for some heads (see the class docs).

        Args:
            d_out (Tensor): (B, h, K, N, d) cotangent of the patch rows of O.
            heads (slice): The heads of ``d_out``.

        Returns:
            tuple: Sums (B, 3, h, K, d) for q, k, v and the probabilities
            (B, h, L, L).
        """
        q, k, v, out = self.q[:, heads], self.k[:, heads], self.v[:, heads], self.out[:, heads]
        B, h, K, N, d = d_out.shape
        scale = 1.0 / math.sqrt(d)
        probs = torch.matmul(q * scale, k.transpose(-2, -1)).softmax(dim=-1)  # (B, h, L, L)
        rows = probs[:, :, 1:]  # patch queries (B, h, N, L)
        p0 = rows[..., 0]  # attention to [CLS], (B, h, N)
        delta = (d_out * out[:, :, None, 1:]).sum(dim=-1)  # (B, h, K, N)
        dv = torch.einsum('bhm,bhkmd->bhkd', 1 - p0, d_out)
        to_cls = torch.einsum('bhkmd,bhd->bhkm', d_out, v[:, :, 0])
        dk = scale * torch.einsum('bhkm,bhmd->bhkd', p0[:, :, None] * (delta - to_cls),
                                  q[:, :, 1:])
        rhs = torch.cat([d_out, delta[..., None]], dim=-1)  # (B, h, K, N, d + 1)
        rhs = rhs.transpose(2, 3).reshape(B, h, N, K * (d + 1))
        back = torch.matmul(rows.transpose(-2, -1), rhs).view(B, h, N + 1, K, d + 1)
        col = (back[..., :d] * v[:, :, :, None]).sum(dim=-1) - back[..., d]  # (B, h, L, K)
        dq = scale * torch.einsum('bhnk,bhnd->bhkd', col, k)
        return torch.stack([dq, dk, dv], dim=1), probs

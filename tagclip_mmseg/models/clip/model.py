"""CLIP in OpenAI's parameter naming, with the hooks TagCLIP and CLIP-ES need."""
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Container, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor, nn

from ...utils.torch_compat import is_autocast_enabled

__all__ = [
    'LayerNorm', 'QuickGELU', 'CLIPAttention', 'ResidualAttentionBlock', 'Transformer',
    'VisionTransformer', 'CLIP', 'ViTOutput', 'AttnCallback', 'LayerMasks',
    'resample_pos_embed'
]

#: ``callback(layer_index, head_averaged_probs)``; ``probs`` has shape (B, L, L).
AttnCallback = Callable[[int, Tensor], None]
#: Additive attention masks, per layer index: each broadcastable to (B, heads, L, L).
LayerMasks = Mapping[int, Tensor]


class LayerNorm(nn.LayerNorm):
    """LayerNorm that computes in fp32 and casts back, as OpenAI's CLIP does."""

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` in fp32 and cast back."""
        orig_type = x.dtype
        ret = F.layer_norm(
            x.float(), self.normalized_shape,
            self.weight.float() if self.weight is not None else None,
            self.bias.float() if self.bias is not None else None, self.eps)
        return ret.to(orig_type)


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, the activation OpenAI's CLIP was trained with."""

    def forward(self, x: Tensor) -> Tensor:
        """Apply the activation."""
        return x * torch.sigmoid(1.702 * x)


class CLIPAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names.

    Args:
        embed_dim (int): Token width.
        num_heads (int): Number of attention heads.
    """

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f'embed_dim {embed_dim} is not divisible by num_heads {num_heads}')
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        #: Budget for the transient logits of one head chunk.
        self.max_chunk_bytes = 256 * 1024**2
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self,
                x: Tensor,
                attn_mask: Optional[Tensor] = None,
                need_weights: bool = False,
                weights_before_mask: bool = True,
                num_queries: Optional[int] = None) -> Tuple[Tensor, Optional[Tensor]]:
        """Attend.

        Args:
            x (Tensor): Tokens, shape (B, L, D) (batch first).
            attn_mask (Tensor, optional): Additive mask, (B, heads, L, L).
            need_weights (bool): Also return head-averaged probabilities.
            weights_before_mask (bool): Return the unmasked probabilities.
            num_queries (int, optional): Only the first tokens query.

        Returns:
            tuple: Output (B, Q, D) and the (B, L, L) map or ``None``.
        """
        B, L, D = x.shape
        if num_queries is not None:
            if need_weights:
                raise ValueError('attention maps need every query; do not combine need_weights '
                                 'with num_queries')
            if attn_mask is not None and attn_mask.dim() >= 2:
                attn_mask = attn_mask[..., :num_queries, :]
        q, k, v = self.split_qkv(x, num_queries)
        if attn_mask is not None and attn_mask.dtype != q.dtype:
            attn_mask = attn_mask.to(q.dtype)
        if not need_weights:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            weights = None
        else:
            out, weights = self._attend_with_weights(q, k, v, attn_mask, weights_before_mask)
        out = out.transpose(1, 2).reshape(B, q.shape[2], D)
        return self.out_proj(out), weights

    def split_qkv(self,
                  x: Tensor,
                  num_queries: Optional[int] = None,
                  dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """Input projection split into per-head queries, keys and values.

        Args:
            x (Tensor): Tokens (B, L, D).
            num_queries (int, optional): See :meth:`forward`.
            dtype (torch.dtype, optional): Dtype of the projection.

        Returns:
            tuple: ``q`` (B, H, Q, d), ``k`` and ``v`` (B, H, L, d).
        """
        B, L, D = x.shape
        H, d = self.num_heads, self.head_dim
        weight, bias = self.in_proj_weight, self.in_proj_bias
        if dtype is not None:
            weight, bias = weight.to(dtype), bias.to(dtype)
        if num_queries is None:
            qkv = F.linear(x, weight, bias)
            qkv = qkv.view(B, L, 3, H, d).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # (B, H, L, d)
            return q, k, v
        w_q, w_kv = weight.split([D, 2 * D])
        b_q, b_kv = bias.split([D, 2 * D])
        q = F.linear(x[:, :num_queries], w_q, b_q).view(B, num_queries, H, d).transpose(1, 2)
        k, v = F.linear(x, w_kv, b_kv).view(B, L, 2, H, d).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def head_chunk(self, batch: int, tokens: int, itemsize: int = 4) -> int:
        """How many heads' (batch, h, tokens, tokens) maps fit :attr:`max_chunk_bytes`.

        Args:
            batch (int): Images.
            tokens (int): Tokens per image (``L``).
            itemsize (int): Bytes per element of the maps.

        Returns:
            int: Heads per chunk, between 1 and ``num_heads``.
        """
        per_head = batch * tokens * tokens * max(itemsize, 4)
        return max(1, min(self.num_heads, self.max_chunk_bytes // max(per_head, 1)))

    def _attend_with_weights(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor],
                             weights_before_mask: bool) -> Tuple[Tensor, Tensor]:
        """Attention that also returns head-averaged probabilities, in head chunks."""
        B, H, L, d = q.shape
        step = self.head_chunk(B, L, q.element_size())
        scale = 1.0 / math.sqrt(d)
        # Autograd cannot record ``out=`` ops: a graph-building call gets fresh tensors.
        record = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)
        weights = torch.zeros(B, L, L, dtype=torch.float32, device=q.device)
        outs = []
        buf_logits = buf_probs = None
        for h0 in range(0, H, step):
            h1 = min(H, h0 + step)
            qs, ks, vs = q[:, h0:h1], k[:, h0:h1], v[:, h0:h1]
            if not record and (buf_logits is None or buf_logits.shape[1] != h1 - h0):
                buf_logits = q.new_empty(B, h1 - h0, L, L)
                buf_probs = torch.empty_like(buf_logits)
            logits = torch.matmul(qs * scale, ks.transpose(-2, -1), out=buf_logits)
            mask = attn_mask
            if mask is not None and mask.dim() == 4 and mask.shape[1] == H:
                mask = mask[:, h0:h1]
            if mask is not None and not weights_before_mask:
                logits += mask
            probs = torch.softmax(logits, dim=-1, out=buf_probs)
            for i in range(h1 - h0):
                weights += probs[:, i]
            if mask is not None and weights_before_mask:
                # The maps are unmasked; the output uses the masked logits.
                outs.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask))
            else:
                outs.append(torch.matmul(probs, vs))
        # Under autocast the maps keep the fp32 of their sum.
        maps = weights / H
        if not is_autocast_enabled(q.device.type):
            maps = maps.to(q.dtype)
        return torch.cat(outs, dim=1), maps


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block in OpenAI's naming (``ln_1``, ``attn``, ``mlp``)."""

    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        self.attn = CLIPAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(
            OrderedDict([('c_fc', nn.Linear(d_model, d_model * 4)), ('gelu', QuickGELU()),
                         ('c_proj', nn.Linear(d_model * 4, d_model))]))
        self.ln_2 = LayerNorm(d_model)

    def forward(self,
                x: Tensor,
                attn_mask: Optional[Tensor] = None,
                need_weights: bool = False,
                weights_before_mask: bool = True,
                num_queries: Optional[int] = None) -> Tuple[Tensor, Optional[Tensor]]:
        """Run the block; arguments as in :meth:`CLIPAttention.forward`."""
        return self.forward_from_normed(x, self.ln_1(x), attn_mask, need_weights,
                                        weights_before_mask, num_queries)

    def forward_from_normed(self,
                            x: Tensor,
                            normed: Tensor,
                            attn_mask: Optional[Tensor] = None,
                            need_weights: bool = False,
                            weights_before_mask: bool = True,
                            num_queries: Optional[int] = None) -> Tuple[Tensor, Optional[Tensor]]:
        """Run the block given ``normed = ln_1(x)``, Grad-CAM's activation."""
        a, w = self.attn(normed, attn_mask, need_weights, weights_before_mask, num_queries)
        if num_queries is not None:
            x = x[:, :num_queries]
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, w


class Transformer(nn.Module):
    """A stack of :class:`ResidualAttentionBlock` (``resblocks.i``)."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(
            *[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        """Run every block with ``attn_mask``."""
        for blk in self.resblocks:
            x, _ = blk(x, attn_mask)
        return x


def resample_pos_embed(pos_embed: Tensor,
                       grid_hw: Tuple[int, int],
                       round_to_fp16: bool = False) -> Tensor:
    """Resample a (1 + g*g, D) positional embedding to ``grid_hw``.

    Args:
        pos_embed (Tensor): (1 + g*g, D) embedding.
        grid_hw (tuple[int, int]): Target token grid (rows, cols).
        round_to_fp16 (bool): Round the resampled embedding to fp16 and back.

    Returns:
        Tensor: (1 + h*w, D) embedding in ``pos_embed``'s dtype.
    """
    n_old = pos_embed.shape[0] - 1
    g = int(round(math.sqrt(n_old)))
    if g * g != n_old:
        raise ValueError(f'positional embedding has {n_old} patch rows, not a square grid')
    h, w = grid_hw
    if (h, w) == (g, g):
        return pos_embed
    cls_row, grid = pos_embed[:1], pos_embed[1:]
    grid = grid.reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(h, w), mode='bilinear', align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(h * w, -1).to(pos_embed.dtype)
    out = torch.cat([cls_row, grid], dim=0)
    if round_to_fp16:
        out = out.half().to(pos_embed.dtype)
    return out


@dataclass
class ViTOutput:
    """What the attention-reporting stages of :class:`VisionTransformer` return.

    Attributes:
        tokens (Tensor): (B, L, E) output tokens (``forward_attention``).
        attn_maps (list[Tensor]): (B, L, L) maps of the reported layers.
        hidden (Tensor): (B, L, D) stream entering the stop block.
        grid_hw (tuple): Token grid (rows, cols).
    """
    tokens: Optional[Tensor] = None
    attn_maps: List[Tensor] = field(default_factory=list)
    hidden: Optional[Tensor] = None
    grid_hw: Tuple[int, int] = (0, 0)


class VisionTransformer(nn.Module):
    """CLIP's image tower (``visual.*``), with one forward per use.

    Options are per call, so one CLIP serves models of different quirks.
    """

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int,
                 heads: int, output_dim: int) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.patch_size = patch_size
        self.output_dim = output_dim
        self.num_layers = layers
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(
            scale * torch.randn((input_resolution // patch_size)**2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' dtype."""
        return self.conv1.weight.dtype

    def embed(self, x: Tensor,
              round_pos_embed_fp16: bool = False) -> Tuple[Tensor, Tuple[int, int]]:
        """Patchify, prepend [CLS], add positional embedding, ``ln_pre``."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'expected images of shape (B, 3, H, W), got {tuple(x.shape)}')
        H, W = x.shape[-2:]
        p = self.patch_size
        if H % p or W % p or H < p or W < p:
            raise ValueError(f'input size {H}x{W} must be a positive multiple of the patch size '
                             f'{p} of this CLIP; resize with tagclip_mmseg.datasets.'
                             f'ResizeToPatchMultiple(patch_size={p}) (a config written for '
                             'another CLIP needs its patch_size changed)')
        x = self.conv1(x.to(self.dtype))  # (B, D, h, w)
        grid_hw = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = resample_pos_embed(self.positional_embedding, grid_hw, round_pos_embed_fp16)
        x = x + pos.to(x.dtype)
        return self.ln_pre(x), grid_hw

    def head(self, x: Tensor) -> Tensor:
        """``ln_post`` then ``proj`` on every token."""
        return self.ln_post(x) @ self.proj

    def layer_index(self, index: int, what: str = 'layer') -> int:
        """``index`` as a 0-based layer, negative indices counting from the end."""
        n = self.num_layers
        if not -n <= int(index) < n:
            raise ValueError(f'{what} {index} must index the {n} layers of this vision tower '
                             f'(-{n} to {n - 1})')
        return int(index) % n

    def _layer_masks(self, attn_masks: Optional[LayerMasks]) -> Dict[int, Tensor]:
        """``attn_masks`` keyed by 0-based layer."""
        return {self.layer_index(k, 'attn_masks key'): v for k, v in (attn_masks or {}).items()}

    def _run_blocks(self,
                    x: Tensor,
                    end: int,
                    masks: Mapping[int, Tensor],
                    map_layers: Container[int] = (),
                    on_map: Optional[AttnCallback] = None,
                    weights_before_mask: bool = True,
                    cls_last: bool = False) -> Tensor:
        """Blocks ``0 .. end - 1``: the one block loop every stage runs.

        Args:
            x (Tensor): Embedded tokens (B, L, D).
            end (int): Number of blocks to run.
            masks (Mapping[int, Tensor]): Additive masks by 0-based layer.
            map_layers (Container[int]): Layers whose maps go to ``on_map``.
            on_map (callable, optional): ``on_map(layer, probs)``.
            weights_before_mask (bool): See :meth:`CLIPAttention.forward`.
            cls_last (bool): The last block updates the [CLS] token alone.

        Returns:
            Tensor: The residual stream after block ``end - 1``.
        """
        last = self.num_layers - 1
        for i in range(end):
            queries = 1 if cls_last and i == last else None
            x, w = self.transformer.resblocks[i](x, masks.get(i), i in map_layers,
                                                 weights_before_mask, queries)
            if w is not None:
                on_map(i, w)
        return x

    def _map_sink(self, out: ViTOutput,
                  attn_callback: Optional[AttnCallback]) -> AttnCallback:
        """Where reported maps go: the callback, else ``out.attn_maps``."""
        if attn_callback is not None:
            return attn_callback
        return lambda _, w: out.attn_maps.append(w)

    def forward(self,
                x: Tensor,
                attn_masks: Optional[LayerMasks] = None,
                round_pos_embed_fp16: bool = False) -> Tensor:
        """Encode images into per-token embeddings, every layer fused.

        Args:
            x (Tensor): Normalised images (B, 3, H, W).
            attn_masks (Mapping[int, Tensor], optional): Additive masks by
                layer index (negative counts from the end).
            round_pos_embed_fp16 (bool): See :func:`resample_pos_embed`.

        Returns:
            Tensor: All tokens after ``ln_post`` and ``proj``, (B, L, E).
        """
        x, _ = self.embed(x, round_pos_embed_fp16)
        return self.head(self._run_blocks(x, self.num_layers, self._layer_masks(attn_masks)))

    def forward_attention(self,
                          x: Tensor,
                          attn_layers: Optional[Iterable[int]] = None,
                          attn_callback: Optional[AttnCallback] = None,
                          attn_masks: Optional[LayerMasks] = None,
                          weights_before_mask: bool = True,
                          round_pos_embed_fp16: bool = False) -> ViTOutput:
        """The forward that also reports attention maps.

        Args:
            x (Tensor): Normalised images (B, 3, H, W).
            attn_layers (Iterable[int], optional): Layers whose maps are
                reported; ``None`` reports every layer.
            attn_callback (callable, optional): ``cb(layer, probs)`` instead of
                keeping the maps.
            attn_masks (Mapping[int, Tensor], optional): As in :meth:`forward`.
            weights_before_mask (bool): See :meth:`CLIPAttention.forward`.
            round_pos_embed_fp16 (bool): See :meth:`embed`.

        Returns:
            ViTOutput: ``tokens``, ``attn_maps`` and ``grid_hw``.
        """
        x, grid_hw = self.embed(x, round_pos_embed_fp16)
        out = ViTOutput(grid_hw=grid_hw)
        layers = range(self.num_layers) if attn_layers is None else attn_layers
        x = self._run_blocks(x, self.num_layers, self._layer_masks(attn_masks),
                             {self.layer_index(i, 'attn_layers') for i in layers},
                             self._map_sink(out, attn_callback), weights_before_mask)
        out.tokens = self.head(x)
        return out

    def forward_until(self,
                      x: Tensor,
                      block: int,
                      attn_layers: Iterable[int] = (),
                      attn_callback: Optional[AttnCallback] = None,
                      round_pos_embed_fp16: bool = False) -> ViTOutput:
        """Run the blocks before ``block`` and return the stream entering it.

        Args:
            x (Tensor): Normalised images (B, 3, H, W).
            block (int): The block to stop before (``num_layers``: all).
            attn_layers (Iterable[int]): Layers whose maps are reported.
            attn_callback (callable, optional): As in :meth:`forward_attention`.
            round_pos_embed_fp16 (bool): See :meth:`embed`.

        Returns:
            ViTOutput: ``hidden`` (B, L, D), ``attn_maps`` and ``grid_hw``.
        """
        end = self.num_layers if block == self.num_layers else self.layer_index(block, 'block')
        x, grid_hw = self.embed(x, round_pos_embed_fp16)
        out = ViTOutput(grid_hw=grid_hw)
        out.hidden = self._run_blocks(x, end, {},
                                      {self.layer_index(i, 'attn_layers') for i in attn_layers},
                                      self._map_sink(out, attn_callback))
        return out

    def forward_cls(self,
                    x: Tensor,
                    attn_masks: Optional[LayerMasks] = None,
                    round_pos_embed_fp16: bool = False) -> Tensor:
        """The [CLS] embedding alone; equals ``forward(x, attn_masks)[:, 0]``.

        Args:
            x (Tensor): Normalised images (B, 3, H, W).
            attn_masks (Mapping[int, Tensor], optional): As in :meth:`forward`.
            round_pos_embed_fp16 (bool): See :meth:`embed`.

        Returns:
            Tensor: (B, E) [CLS] embeddings after ``ln_post`` and ``proj``.
        """
        x, _ = self.embed(x, round_pos_embed_fp16)
        x = self._run_blocks(x, self.num_layers, self._layer_masks(attn_masks), cls_last=True)
        return self.head(x)[:, 0]


@MODELS.register_module(name='OpenAICLIP')
class CLIP(nn.Module):
    """OpenAI's CLIP (ViT image tower only) with OpenAI's constructor arguments."""

    def __init__(self,
                 embed_dim: int = 512,
                 image_resolution: int = 224,
                 vision_layers: int = 12,
                 vision_width: int = 768,
                 vision_patch_size: int = 16,
                 context_length: int = 77,
                 vocab_size: int = 49408,
                 transformer_width: int = 512,
                 transformer_heads: int = 8,
                 transformer_layers: int = 12,
                 vision_heads: Optional[int] = None) -> None:
        super().__init__()
        self.context_length = context_length
        self.visual = VisionTransformer(
            input_resolution=image_resolution,
            patch_size=vision_patch_size,
            width=vision_width,
            layers=vision_layers,
            heads=vision_heads or max(vision_width // 64, 1),
            output_dim=embed_dim)
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads)
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.register_buffer('causal_mask', self._causal_mask(context_length), persistent=False)
        self._init_text()

    @staticmethod
    def _causal_mask(n: int) -> Tensor:
        return torch.full((n, n), float('-inf')).triu_(1)

    def _init_text(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=self.transformer.width**-0.5)

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' dtype."""
        return self.visual.conv1.weight.dtype

    def encode_image(self, image: Tensor) -> Tensor:
        """The [CLS] embedding after ``ln_post`` and ``proj``, (B, E)."""
        return self.visual(image)[:, 0]

    def encode_text(self, text: Tensor) -> Tensor:
        """Text embeddings at the end-of-text token (the largest id), (B, E)."""
        L = text.shape[1]
        x = self.token_embedding(text).to(self.dtype)
        x = x + self.positional_embedding[:L].to(self.dtype)
        x = self.transformer(x, self.causal_mask[:L, :L].to(self.dtype))
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
        return x @ self.text_projection

    def forward(self, image: Tensor, text: Tensor) -> Tuple[Tensor, Tensor]:
        """Image-text logits like OpenAI's ``CLIP.forward``."""
        img = F.normalize(self.encode_image(image), dim=-1)
        txt = F.normalize(self.encode_text(text), dim=-1)
        logits = self.logit_scale.exp() * img @ txt.t()
        return logits, logits.t()

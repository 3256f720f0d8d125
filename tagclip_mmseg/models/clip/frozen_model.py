"""What the training-free CLIP models share."""
from contextlib import nullcontext
from typing import (ContextManager, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple,
                    Union)

import torch
from mmengine.model import BaseModel
from mmengine.structures import BaseDataElement
from mmseg.registry import MODELS
from torch import Tensor, nn

from ...utils.class_names import ClassName
from ...utils.init_args import RecordsInitArgs
from ...utils.quirks import Quirks, QuirksLike, resolve_quirks
from ...utils.torch_compat import autocast_supports
from ..ops.synonyms import class_softmax
from .checkpoint import build_clip, resolve_dtype
from .data_preprocessor import group_by_shape
from .presets import CLASS_PRESETS, resolve_background, resolve_classes
from .text_classifier import (build_text_classifier, check_synonyms, class_prompt_names, text_rows,
                              tokenize_prompts)

__all__ = ['FrozenModel', 'FrozenCLIPModel', 'Vocabulary', 'full_precision']


def full_precision(device: Union[str, torch.device]) -> ContextManager:
    """``torch.autocast`` switched off on ``device``."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


class Vocabulary(NamedTuple):
    """A resolved, checked vocabulary: what one call classifies against."""

    #: Foreground classes (a name or a synonym tuple each), or ``None``.
    class_names: Optional[Tuple[ClassName, ...]]
    #: Softmax-only competitors.
    background_words: Tuple[str, ...]


class FrozenModel:
    """Mixin of the training-free models: frozen, eval mode, no training."""

    #: The data-sample class :meth:`predict` fills.
    sample_type: type = BaseDataElement

    def train(self, mode: bool = True) -> nn.Module:
        """Stay in eval mode whatever the runner asks: every weight is frozen."""
        return super().train(False)

    def loss(self, inputs, data_samples) -> dict:
        """Refuse: there is nothing to train."""
        raise RuntimeError(f'{type(self).__name__} is training-free: run it with tools/test.py '
                           '(no checkpoint needed), not tools/train.py.')

    def train_step(self, data, optim_wrapper):
        """Refuse, as :meth:`loss` does."""
        return self.loss(None, None)

    def forward(self,
                inputs: Union[Tensor, List[Tensor]],
                data_samples: Optional[list] = None,
                mode: str = 'predict'):
        """Dispatch mmengine's forward ``mode`` ('predict', 'tensor', 'loss')."""
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        inputs, data_samples = self.image_list(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return self._forward(inputs, data_samples)
        raise ValueError(f'unknown mode {mode!r}; expected "predict", "tensor" or "loss"')

    def image_list(self, inputs: Union[Tensor, List[Tensor]],
                   data_samples: Optional[list] = None) -> Tuple[List[Tensor], list]:
        """(3, H, W) images as a list and one data sample each.

        Raises:
            ValueError: When the counts differ.
        """
        if isinstance(inputs, Tensor):
            inputs = list(inputs) if inputs.dim() == 4 else [inputs]
        if data_samples is None:
            data_samples = [self.sample_type(metainfo=dict(ori_shape=tuple(x.shape[-2:])))
                            for x in inputs]
        if len(data_samples) != len(inputs):
            raise ValueError(f'got {len(inputs)} images but {len(data_samples)} data samples')
        return inputs, data_samples

    def clip_input(self, images: Tensor) -> Tensor:
        """Images in the CLIP's dtype; the caller runs in :func:`full_precision`."""
        return images.to(self.clip.dtype)

    @staticmethod
    def stack_outputs(outputs: List[Tensor]) -> Tensor:
        """One tensor of per-image outputs (``forward(mode='tensor')``).

        Raises:
            ValueError: When the images differed in size; use ``predict``.
        """
        if len({tuple(o.shape) for o in outputs}) > 1:
            raise ValueError("forward(mode='tensor') needs images of one size; use "
                             "mode='predict' for images of different sizes")
        return torch.stack(outputs)


class FrozenCLIPModel(FrozenModel, RecordsInitArgs, BaseModel):
    """Base of the training-free CLIP models (tagger, labeler).

    Args:
        clip (dict | nn.Module): :func:`load_clip` arguments (``checkpoint``,
            ``dtype``) or a built CLIP, which models may share.
        quirks (str | dict | Quirks): Reference quirks to reproduce
            (docs/modes.md): ``'reference'``, ``'fixed'`` or fields.
        text_cache_dir (str, optional): Folder of the text-embedding cache.
        autocast (str, optional): ``'bf16'`` or ``'fp16'`` for the ViT calls.
        images_per_forward (int, optional): Equal-size images per pass.
        truncate_prompts (bool): Cut prompts too long for CLIP's context
            with a warning instead of refusing the vocabulary.
        synonyms (str): ``'joined'`` (one prompt per class) or ``'max'``
            (docs/method.md, "Synonyms").
        data_preprocessor (dict, optional): Defaults to
            ``CLIPDataPreprocessor``.
        init_cfg (dict, optional): Unused.
    """

    #: Prompt templates; subclasses set them before :meth:`set_vocabulary`.
    templates: Tuple[str, ...] = ()

    def __init__(self,
                 clip: Union[None, dict, nn.Module] = None,
                 quirks: QuirksLike = 'reference',
                 text_cache_dir: Optional[str] = None,
                 autocast: Optional[str] = None,
                 images_per_forward: Optional[int] = None,
                 truncate_prompts: bool = False,
                 synonyms: str = 'joined',
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        # mmseg's registry: direct construction works without a default scope.
        if data_preprocessor is None or isinstance(data_preprocessor, dict):
            data_preprocessor = MODELS.build(data_preprocessor or dict(type='CLIPDataPreprocessor'))
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.quirks: Quirks = resolve_quirks(quirks)
        self.autocast_dtype = self._resolve_autocast(autocast)
        if images_per_forward is not None and (not isinstance(images_per_forward, int)
                                               or isinstance(images_per_forward, bool)
                                               or images_per_forward < 1):
            raise ValueError('images_per_forward must be a positive integer or None (by '
                             f'device), got {images_per_forward!r}')
        self.images_per_forward = images_per_forward
        self.clip = build_clip(clip if clip is not None else {})
        self.clip.requires_grad_(False)
        self.clip.eval()
        self.text_cache_dir = text_cache_dir
        self.truncate_prompts = bool(truncate_prompts)
        self.synonyms = check_synonyms(synonyms)
        self.class_names: Optional[Tuple[ClassName, ...]] = None
        self.background_words: Tuple[str, ...] = ()
        self._text_embeddings: Dict[tuple, Tensor] = {}
        self._row_classes: Dict[tuple, Optional[Tensor]] = {}

    @staticmethod
    def _resolve_autocast(autocast: Optional[str]) -> Optional[torch.dtype]:
        if autocast is None or autocast is False:
            return None
        try:
            dtype = resolve_dtype(autocast)
        except ValueError:
            dtype = None
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"autocast must be None, 'bf16' or 'fp16', got {autocast!r}; "
                             "for full fp16 weights set clip=dict(dtype='fp16') instead")
        return dtype

    def autocast_context(self, device: torch.device) -> ContextManager:
        """``torch.autocast`` for ``device`` when enabled, else a no-op.

        Raises:
            ValueError: If this torch has no such autocast on ``device``.
        """
        if self.autocast_dtype is None:
            return nullcontext()
        if not autocast_supports(device.type, self.autocast_dtype):
            raise ValueError(f'autocast={self.autocast_dtype} is not available on {device.type} '
                             f'with torch {torch.__version__}; use another autocast dtype '
                             "(the CPU has 'bf16') or autocast=None")
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    @property
    def round_pos_embed_fp16(self) -> bool:
        """``quirks.pos_embed_fp16``, passed per ViT call."""
        return self.quirks.pos_embed_fp16

    def layer_indices(self, name: str, layers: Sequence[int]) -> Tuple[int, ...]:
        """Validate vision-layer indices; return them non-negative, sorted, unique.

        Raises:
            ValueError: Naming the argument and the CLIP's depth.
        """
        n = self.clip.visual.num_layers
        if not layers or any(not -n <= int(i) < n for i in layers):
            raise ValueError(f'{name} {tuple(layers)} must be non-empty 0-based indices of the '
                             f'{n} vision layers of this CLIP checkpoint')
        return tuple(sorted({int(i) % n for i in layers}))

    def set_vocabulary(self,
                       class_names: Union[str, Sequence[ClassName]],
                       background_words: Union[None, str, Sequence[str]] = None) -> None:
        """Set the foreground classes and optionally background words."""
        self.class_names, self.background_words = self.resolve_vocabulary(
            class_names, background_words)

    @property
    def vocabulary(self) -> Vocabulary:
        """The model's own vocabulary (what a call without one uses)."""
        return Vocabulary(self.class_names, self.background_words)

    def resolve_vocabulary(self,
                           class_names: Union[str, Sequence[ClassName]],
                           background_words: Union[None, str, Sequence[str]] = None
                           ) -> Vocabulary:
        """A checked :class:`Vocabulary` for this model, without setting it.

        Args:
            class_names: Foreground classes or a preset name.
            background_words: Background words or a preset name; ``None``
                keeps the model's own.

        Raises:
            ValueError: For an empty, invalid, duplicated or too long
                vocabulary.
        """
        if class_names is None:
            raise ValueError('class_names is None: give a list of class names (or a preset '
                             f'name such as {sorted(CLASS_PRESETS)})')
        names = resolve_classes(class_names)
        if not names:
            raise ValueError('the class vocabulary is empty: give class_names in the model '
                             'config or metainfo=dict(classes=...) in the dataset')
        try:
            class_prompt_names(names)
            # Under 'max' every name is a text row: no two classes may share one.
            class_prompt_names(text_rows(names, self.synonyms)[0])
        except ValueError as e:
            rule = (" (synonyms='max' embeds each name on its own: no two classes may share "
                    'a name)') if self.synonyms == 'max' else ''
            raise ValueError(f'class_names: {e}{rule}') from None
        names = tuple(n if isinstance(n, str) else tuple(n) for n in names)
        words = self.background_words if background_words is None else \
            resolve_background(background_words)
        try:  # the same duplicate rule (as CLIP reads the text) over both lists
            class_prompt_names(text_rows(names + words, self.synonyms)[0])
        except ValueError as e:
            raise ValueError('background_words must differ from class_names and from each '
                             f'other; remove the repeats from background_words: {e}') from None
        if self.templates:
            tokenize_prompts(text_rows(names + words, self.synonyms)[0], self.templates,
                             int(getattr(self.clip, 'context_length', 77)),
                             self.truncate_prompts)
        return Vocabulary(names, tuple(words))

    def call_vocabulary(self, vocabulary: Optional[Vocabulary] = None) -> Vocabulary:
        """``vocabulary``, or the model's own when ``None``.

        Raises:
            RuntimeError: When neither has class names yet.
        """
        voc = vocabulary or self.vocabulary
        if voc.class_names is None:
            raise RuntimeError(f'{type(self).__name__} has no vocabulary: set class_names in '
                               'the config, or add VocabularyHook to read it from the dataset')
        return voc

    @property
    def num_classes(self) -> int:
        """Size of the foreground vocabulary (0 before one is set)."""
        return len(self.class_names or ())

    def text_embeddings(self, class_names: Sequence[ClassName],
                        templates: Sequence[str]) -> Tensor:
        """L2-normalised (R, E) text-row embeddings on the model's device."""
        key = (tuple(n if isinstance(n, str) else tuple(n) for n in class_names), tuple(templates),
               self.synonyms)
        emb = self._text_embeddings.get(key)
        device = self.clip.visual.conv1.weight.device
        if emb is None or emb.device != device:
            with torch.no_grad():
                emb = build_text_classifier(
                    self.clip,
                    class_names,
                    templates,
                    cache_dir=self.text_cache_dir,
                    truncate=self.truncate_prompts,
                    synonyms=self.synonyms)
            emb = emb.to(device=device, dtype=torch.float32)
            self._text_embeddings[key] = emb
        return emb

    def class_probs(self, logits: Tensor, class_names: Sequence[ClassName],
                    support: Optional[Tensor] = None) -> Tensor:
        """(..., C) class probabilities from (..., R) text-row logits.

        Args:
            logits (Tensor): Logits against :meth:`text_embeddings`.
            class_names (Sequence): The vocabulary the rows belong to.
            support (Tensor, optional): (..., C) bool classes in the softmax.

        Returns:
            Tensor: (..., C) probabilities, one per class.
        """
        key = (tuple(n if isinstance(n, str) else tuple(n) for n in class_names), self.synonyms)
        rows = self._row_classes.get(key)
        if key not in self._row_classes or (rows is not None and rows.device != logits.device):
            index = text_rows(class_names, self.synonyms)[1]
            # One row per class (always under 'joined'): the softmax is the answer.
            rows = None if len(index) == len(class_names) else torch.as_tensor(
                index, dtype=torch.long, device=logits.device)
            self._row_classes[key] = rows
        return class_softmax(logits, rows, len(class_names), support)

    def batches(self, inputs: List[Tensor]) -> Iterator[List[int]]:
        """Indices of equal-size images, ``images_per_forward`` at a time."""
        for idx in group_by_shape(inputs):
            step = self.forward_batch_size(inputs[idx[0]].device, len(idx))
            for s in range(0, len(idx), step):
                yield idx[s:s + step]

    def clip_batches(self, inputs: List[Tensor]) -> Iterator[Tuple[List[int], Tensor]]:
        """Each group of :meth:`batches` with its stacked images in the CLIP's dtype."""
        for chunk in self.batches(inputs):
            yield chunk, self.clip_input(torch.stack([inputs[i] for i in chunk]))

    def predict(self, inputs: List[Tensor], data_samples: list, **settings) -> list:
        """Run :meth:`predict_batch` on equal-size groups; keep input order.

        Args:
            inputs (list[Tensor]): Normalised (3, H, W) images.
            data_samples (list): One per image, filled in place.
            **settings: Per-call settings of :meth:`predict_batch`.

        Returns:
            list: ``data_samples``.
        """
        for chunk, batch in self.clip_batches(inputs):
            with full_precision(batch.device):
                self.predict_batch(batch, [data_samples[i] for i in chunk], **settings)
        return data_samples

    def _forward(self, inputs: List[Tensor], data_samples: list) -> Tensor:
        """Stacked per-image :meth:`tensor_batch` outputs, in input order."""
        out: List[Optional[Tensor]] = [None] * len(inputs)
        for chunk, batch in self.clip_batches(inputs):
            with full_precision(batch.device):
                result = self.tensor_batch(batch, [data_samples[i] for i in chunk])
            for i, r in zip(chunk, result):
                out[i] = r
        return self.stack_outputs(out)

    def forward_batch_size(self, device: torch.device, group_size: int) -> int:
        """Images per forward for a group of ``group_size`` equal-size images."""
        if self.images_per_forward is not None:
            return int(self.images_per_forward)
        return 1 if torch.device(device).type == 'cpu' else max(group_size, 1)

    def predict_batch(self, images: Tensor, data_samples: list, **settings) -> None:
        """Fill ``data_samples`` in place for a batch of equal-size images."""
        raise NotImplementedError

    def tensor_batch(self, images: Tensor, data_samples: list) -> Tensor:
        """The ``forward(mode='tensor')`` output of a batch of equal-size images."""
        raise NotImplementedError

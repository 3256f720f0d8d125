"""Tag images (and get CAMs and pseudo masks) in a few lines of Python.

.. code:: python

    from tagclip_mmseg.apis import TagCLIPInferencer

    inferencer = TagCLIPInferencer(classes=['cat', 'dog', 'person'])
    inferencer('photo.jpg')
    # [{'index': 0, 'img_path': 'photo.jpg', 'tags': ['cat'], 'tag_indices': [0],
    #   'scores': {'cat': 0.41, 'dog': 0.12, 'person': 0.08}, 'error': None}]
    inferencer('photos/', return_cams=True, return_mask=True)

A call runs ``preprocess`` (group by token grid, load), ``forward``,
``visualize`` and ``postprocess``, as mmengine's ``BaseInferencer`` does.
"""
import copy
import logging
import os.path as osp
import threading
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.config import Config
from mmengine.infer import BaseInferencer
from mmengine.logging import print_log
from mmpretrain.structures import DataSample
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from torch import nn

from ..datasets.image_io import ImageLoadError
from ..datasets.transforms import LoadImageRobust, ResizeToPatchMultiple, image_grid
from ..models.clip.frozen_model import Vocabulary
from ..models.clip.presets import resolve_background, resolve_classes
from ..models.clip.text_classifier import class_prompt_names
from ..utils.class_names import ClassName
from ..utils.token_grid import group_indices
from ..visualization import mask_label_names, save_result_images, unique_stems
from .inputs import CHANNEL_ORDERS, InputItem, array_to_rgb, expand_inputs
from .model_configs import (cam_class_names, class_key, config_vocabulary, default_background_words,
                            default_tagger_cfg, labeler_cfg_for, labeler_config, load_model_config,
                            set_text_cache_dir, split_models, to_plain_dict)

__all__ = ['TagCLIPInferencer', 'DEFAULT_MAX_TOKENS', 'check_vocabulary_argument']


class _CallVocabulary(NamedTuple):
    """The vocabularies of one inferencer call (the labeler's when it runs)."""

    tagger: Vocabulary
    labeler: Optional[Vocabulary]


def _predict(model: nn.Module, data: dict, **settings) -> list:
    """``model.test_step`` with per-call settings passed down to ``predict``."""
    data = model.data_preprocessor(data, False)
    return model.predict(data['inputs'], data['data_samples'], **settings)

#: Default token budget per image (1024 x 1024 at patch 16): TagCLIP keeps
#: N x N attention maps; larger images are scaled down with a warning.
DEFAULT_MAX_TOKENS = 4096

InputsType = Union[InputItem, Sequence[InputItem]]


def check_vocabulary_argument(name: str, value) -> None:
    """Fail, naming the argument, unless ``value`` is None, a preset name or a list of names."""
    if value is None:
        return
    try:
        names = resolve_classes(value) if name == 'classes' else resolve_background(value)
        if names or name == 'classes':  # no background words is allowed
            class_prompt_names(names)
    except (TypeError, ValueError) as e:
        raise ValueError(f'{name}: {e}') from None


class TagCLIPInferencer(BaseInferencer):
    """Open-vocabulary tags, CAMs and pseudo masks for images.

    Args:
        model (str | Config | dict, optional): A tagging or pseudo-label
            config (or its bare name); None for the ViT-B/16 reference settings.
        checkpoint (str, optional): CLIP weights: a path, an OpenAI model
            name or an ``http(s)`` URL; replaces the config's.
        device (str, optional): ``'cpu'``, ``'cuda'``...; None picks CUDA when available.
        batch_size (int): Images per forward (equal-size images only).
        classes (str | Sequence[str | Sequence[str]], optional): The
            vocabulary: synonym lists, a preset name or a name file
            (:func:`~tagclip_mmseg.utils.read_name_file`). None: the config's.
        background_words (str | Sequence[str], optional): Softmax competitors,
            a preset or a name file; None: the config's; ``[]`` disables them.
        with_cams (bool): Build the CLIP-ES labeler now, not on first use.
        labeler (str | Config | dict, optional): A pseudo-label config (or
            model dict) replacing the default labeler's settings.
        text_cache_dir (str, optional): Folder of the text-embedding cache.
        max_tokens (int, optional): Token budget per image; None disables it.
        on_error (str): ``'raise'`` or ``'skip'`` for an unreadable image file.
        truncate_prompts (bool): Cut prompts too long for CLIP's context
            (with a warning) instead of refusing them.

    Calls may run concurrently: per-call settings go to ``predict``, never to
    the shared models.
    """

    preprocess_kwargs: set = {'channel_order'}
    forward_kwargs: set = {'return_cams', 'return_mask'}
    visualize_kwargs: set = {'out_dir', 'title'}
    postprocess_kwargs: set = set()

    def __init__(self,
                 model: Union[str, Config, dict, None] = None,
                 checkpoint: Optional[str] = None,
                 device: Optional[str] = None,
                 batch_size: int = 1,
                 classes: Optional[Sequence[ClassName]] = None,
                 background_words: Optional[Sequence[str]] = None,
                 with_cams: bool = False,
                 labeler: Union[str, Config, dict, None] = None,
                 text_cache_dir: Optional[str] = None,
                 max_tokens: Optional[int] = DEFAULT_MAX_TOKENS,
                 on_error: str = 'raise',
                 truncate_prompts: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f'batch_size must be positive, got {batch_size}')
        if on_error not in ('raise', 'skip'):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.batch_size = batch_size
        self.on_error = on_error
        self.max_tokens = max_tokens
        check_vocabulary_argument('classes', classes)
        check_vocabulary_argument('background_words', background_words)
        cfg = self._build_config(model, checkpoint, classes, background_words, labeler,
                                 text_cache_dir)
        if truncate_prompts:
            cfg.model['truncate_prompts'] = True
            cfg.labeler['truncate_prompts'] = True
        self._labeler: Optional[nn.Module] = None
        self._labeler_lock = threading.Lock()  # concurrent first calls build it once
        # Progress is the caller's to show (see iter_results), not a rich bar.
        super().__init__(model=cfg, weights=None, device=device, scope='mmseg',
                         show_progress=False)
        if with_cams:
            self.labeler  # noqa: B018  (build now)

    # ---------------------------------------------------------- construction
    @staticmethod
    def _build_config(model, checkpoint, classes, background_words, labeler,
                      text_cache_dir) -> Config:
        """Tagger and labeler configs with the vocabulary resolved.

        Returns:
            Config: ``model`` (TagCLIP), ``labeler`` (CLIP-ES or None) and the
            source config's remaining entries.
        """
        if model is None:
            cfg = Config(dict(model=default_tagger_cfg(checkpoint)))
        else:
            cfg = load_model_config(model, checkpoint)
        tagger_cfg, labeler_cfg = split_models(to_plain_dict(cfg.model))
        if labeler is not None:
            labeler_cfg = labeler_config(labeler, checkpoint)
        ds_classes, ds_words = config_vocabulary(cfg)
        from_config = tagger_cfg.get('class_names') or ds_classes
        from_config = resolve_classes(from_config) if from_config else None
        if classes is None and not from_config:
            raise ValueError('no classes to tag: pass classes=[...] (e.g. '
                             "classes=['cat', 'dog', 'person']), or a config whose model has "
                             'class_names or whose test dataset has metainfo classes')
        user_classes, user_words = classes is not None, background_words is not None
        classes = [
            c if isinstance(c, str) else list(c)
            for c in resolve_classes(classes if user_classes else from_config)
        ]
        if not user_words:
            background_words = tagger_cfg.get('background_words', ds_words)
            if background_words is None:
                background_words = default_background_words(classes) if model is None else ()
        background_words = resolve_background(background_words)
        tagger_cfg.update(class_names=classes, background_words=list(background_words))
        if labeler_cfg is None:
            labeler_cfg = labeler_cfg_for(tagger_cfg)
        elif 'clip' not in labeler_cfg:
            labeler_cfg['clip'] = copy.deepcopy(tagger_cfg.get('clip') or {})
        # A pseudo-label config's own CAM wording and background set win
        # unless the caller replaced the vocabulary.
        if user_classes or len(resolve_classes(labeler_cfg.get('class_names') or ())) != len(
                classes):
            labeler_cfg['class_names'] = cam_class_names(classes)
        if user_words or 'background_words' not in labeler_cfg:
            labeler_cfg['background_words'] = list(background_words)
        if text_cache_dir is not None:
            set_text_cache_dir(tagger_cfg, labeler_cfg, cache_dir=text_cache_dir)
        cfg.model = tagger_cfg
        cfg.labeler = labeler_cfg
        return cfg

    def _init_model(self, cfg: Config, weights: Optional[str], device: str = 'cpu') -> nn.Module:
        """Build the tagger; its CLIP weights load in its constructor."""
        return self._build(cfg.model, device)

    @staticmethod
    def _runtime_cfg(model_cfg: dict, device: str) -> dict:
        """A plain copy of ``model_cfg`` adapted to ``device`` (fp32 instead of fp16 on CPU)."""
        model_cfg = to_plain_dict(model_cfg)
        clip = model_cfg.get('clip')
        if not str(device).startswith('cuda') and isinstance(clip, dict) and str(
                clip.get('dtype', 'fp32')).lower() in ('fp16', 'float16', 'half'):
            print_log(f'{model_cfg["type"]}: fp16 CLIP requested but running on {device}; '
                      'using fp32', logger='current', level=logging.WARNING)
            clip['dtype'] = 'fp32'
        return model_cfg

    @classmethod
    def _build(cls, model_cfg: dict, device: str) -> nn.Module:
        model = MODELS.build(cls._runtime_cfg(model_cfg, device))
        return model.to(device).eval()

    @property
    def labeler(self) -> nn.Module:
        """The CLIP-ES labeler, built on first use; shares the tagger's CLIP when configs agree."""
        with self._labeler_lock:
            if self._labeler is None:
                device = self._device
                labeler_cfg = self._runtime_cfg(self.cfg.labeler, device)
                tagger_cfg = self._runtime_cfg(self.cfg.model, device)
                if labeler_cfg.get('clip') == tagger_cfg.get('clip'):
                    labeler_cfg['clip'] = self.model.clip
                self._labeler = MODELS.build(labeler_cfg).to(device).eval()
        return self._labeler

    @property
    def _device(self) -> torch.device:
        return self.model.clip.visual.conv1.weight.device

    def _init_pipeline(self, cfg: Config) -> ResizeToPatchMultiple:
        """The per-image transform after loading: resize to a patch multiple."""
        return ResizeToPatchMultiple(patch_size=self.patch_size, max_tokens=self.max_tokens)

    def _init_collate(self, cfg: Config) -> None:
        """Batches are lists of per-image dicts; no collate function is used."""
        return None

    def _init_visualizer(self, cfg: Config) -> None:
        """Pictures come from :mod:`tagclip_mmseg.visualization` (no mmengine visualizer)."""
        return None

    @property
    def patch_size(self) -> int:
        """The CLIP's ViT patch size."""
        return self.model.clip.visual.patch_size

    # -------------------------------------------------------------- vocabulary
    @property
    def classes(self) -> List[str]:
        """Display names of the current vocabulary (first synonym of each class)."""
        return [class_key(c) for c in self.model.class_names]

    def _call_vocabularies(self, classes: Optional[Sequence[ClassName]],
                           background_words: Optional[Sequence[str]],
                           with_labeler: bool) -> '_CallVocabulary':
        """The vocabularies of one call, checked, for the tagger and the labeler."""
        tagger = self.model
        labeler = self.labeler if with_labeler else None
        if classes is None and background_words is None:
            return _CallVocabulary(tagger.vocabulary,
                                   labeler.vocabulary if labeler is not None else None)
        check_vocabulary_argument('classes', classes)
        check_vocabulary_argument('background_words', background_words)
        new_classes = classes is not None
        classes = list(resolve_classes(classes if new_classes else tagger.class_names))
        if background_words is not None:
            background_words = resolve_background(background_words)
        taken = {class_key(c) for c in classes}

        def words(current: Sequence[str]) -> Tuple[str, ...]:
            # Keep the configured background set, minus words that became classes.
            if background_words is not None:
                return tuple(background_words)
            return tuple(w for w in current if w not in taken)

        tagger_voc = tagger.resolve_vocabulary(classes, words(tagger.background_words))
        labeler_voc = None
        if labeler is not None:
            labeler_voc = labeler.resolve_vocabulary(
                cam_class_names(classes) if new_classes else labeler.class_names,
                words(labeler.background_words))
        return _CallVocabulary(tagger_voc, labeler_voc)

    # ------------------------------------------------------------------ calls
    def __call__(self,
                 inputs: InputsType,
                 classes: Optional[Sequence[ClassName]] = None,
                 background_words: Optional[Sequence[str]] = None,
                 batch_size: Optional[int] = None,
                 return_cams: bool = False,
                 return_mask: bool = False,
                 channel_order: str = 'rgb',
                 out_dir: Optional[str] = None,
                 title: Optional[str] = None) -> List[dict]:
        """Tag ``inputs`` and return one result per image, in input order.

        Args:
            inputs (str | np.ndarray | Sequence): An image path, a folder, a
                uint8 (H, W, 3) array, or a list of paths and arrays.
            classes (Sequence, optional): A vocabulary for this call only.
            background_words (Sequence[str], optional): Background words for this call only.
            batch_size (int, optional): Overrides the constructor's.
            return_cams (bool): Add ``cams``: (K, H, W) float32 CLIP-ES maps in ``tags`` order.
            return_mask (bool): Add ``mask``: (H, W) pseudo mask, 0 background,
                ``c + 1`` class ``c``, 255 ignore.
            channel_order (str): ``'rgb'`` or ``'bgr'`` for array inputs.
            out_dir (str, optional): Also write each image's pictures to
                ``out_dir/<image name>/`` and list them under ``visualization``.
            title (str, optional): First line of the drawn tag panel.

        Returns:
            list[dict]: Per image: ``index`` (position in the input list),
            ``img_path`` (None for arrays), ``tags`` (class names),
            ``tag_indices``, ``scores`` (class name -> float, every class),
            ``error`` (None, or why the image was skipped), plus ``cams``,
            ``mask`` and ``visualization`` ((caption, path) pairs) when asked.
        """
        results = dict(
            self.iter_results(inputs, classes, background_words, batch_size, return_cams,
                              return_mask, channel_order, out_dir, title))
        return [results[i] for i in sorted(results)]

    def iter_results(self,
                     inputs: InputsType,
                     classes: Optional[Sequence[ClassName]] = None,
                     background_words: Optional[Sequence[str]] = None,
                     batch_size: Optional[int] = None,
                     return_cams: bool = False,
                     return_mask: bool = False,
                     channel_order: str = 'rgb',
                     out_dir: Optional[str] = None,
                     title: Optional[str] = None) -> Iterator[Tuple[int, dict]]:
        """Like :meth:`__call__`, but yield ``(index, result)`` as batches finish."""
        items = expand_inputs(inputs)
        vocabulary = self._call_vocabularies(classes, background_words,
                                             with_labeler=return_cams or return_mask)
        chunks = self.preprocess(items, batch_size or self.batch_size,
                                 channel_order=channel_order)
        for chunk in chunks:
            preds = self.forward(chunk, return_cams=return_cams, return_mask=return_mask,
                                 vocabulary=vocabulary)
            visuals = self.visualize(chunk, preds, out_dir=out_dir, title=title,
                                     vocabulary=vocabulary)
            for result in self.postprocess(preds, visuals):
                yield result['index'], result

    # --------------------------------------------------------------- stages
    def preprocess(self, inputs: List[InputItem], batch_size: int = 1,
                   channel_order: str = 'rgb') -> Iterator[List[dict]]:
        """Yield batches of loaded images that share one token grid.

        Sizes come from file headers, so one batch of pixels is held at a time.
        """
        if channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
        inputs = [array_to_rgb(x, channel_order) if isinstance(x, np.ndarray) else x
                  for x in inputs]
        names = [osp.splitext(osp.basename(x))[0] if isinstance(x, str) else f'array_{i}'
                 for i, x in enumerate(inputs)]
        stems = unique_stems(names)
        loader = LoadImageRobust(on_error=self.on_error, keep_ori_img=True,
                                 patch_size=self.patch_size)
        for indices in group_indices(self._grid_of(item) for item in inputs).values():
            for start in range(0, len(indices), batch_size):
                yield [
                    self._load(i, inputs[i], stems[i], loader)
                    for i in indices[start:start + batch_size]
                ]

    def _grid_of(self, item: InputItem) -> Optional[Tuple[int, int]]:
        """Token grid of an input; None for a file that cannot be read (skipped)."""
        try:
            return image_grid(item, self.patch_size, self.max_tokens)
        except ImageLoadError:
            if self.on_error == 'raise':
                raise
            return None

    def _load(self, index: int, item: InputItem, stem: str, loader: LoadImageRobust) -> dict:
        """Decode (files) and resize one input; ``load_error`` marks a skipped file."""
        if isinstance(item, np.ndarray):
            data = dict(img_path=None, img=item, ori_img=item, img_shape=item.shape[:2],
                        ori_shape=item.shape[:2])
        else:
            data = loader(dict(img_path=item))
        data.update(index=index, stem=stem)
        if data.get('load_error') is None:
            data = self.pipeline(data)
        return data

    @torch.no_grad()
    def forward(self, inputs: List[dict], return_cams: bool = False,
                return_mask: bool = False,
                vocabulary: Optional['_CallVocabulary'] = None) -> List[dict]:
        """Run the tagger (and the labeler) on one batch of equal-size images.

        Args:
            inputs (list[dict]): Loaded images (:meth:`preprocess`).
            return_cams (bool): Add ``cams``.
            return_mask (bool): Add ``mask``.
            vocabulary: This call's vocabularies (default: the models' own).

        Returns:
            list[dict]: Results without ``visualization``, in batch order.
        """
        if vocabulary is None:
            vocabulary = self._call_vocabularies(None, None, return_cams or return_mask)
        ok = [d for d in inputs if not d.get('load_error')]
        preds = {d['index']: self._error_result(d) for d in inputs if d.get('load_error')}
        if ok:
            tensors = [torch.from_numpy(np.ascontiguousarray(d['img'].transpose(2, 0, 1)))
                       for d in ok]
            meta = [dict(img_path=d['img_path'], ori_shape=d['ori_shape'],
                         img_shape=d['img_shape']) for d in ok]
            tagged = _predict(self.model,
                              dict(inputs=tensors,
                                   data_samples=[DataSample(metainfo=m) for m in meta]),
                              vocabulary=vocabulary.tagger)
            labelled = [None] * len(ok)
            if return_cams or return_mask:
                # A CRF refines masks against the original photo.
                extra = [dict(ori_img=d['ori_img']) if self.labeler.crf is not None else {}
                         for d in ok]
                seg_samples = [
                    SegDataSample(metainfo=dict(m, tags=s.pred_label.tolist(), **e))
                    for m, s, e in zip(meta, tagged, extra)
                ]
                labelled = _predict(self.labeler, dict(inputs=tensors, data_samples=seg_samples),
                                    vocabulary=vocabulary.labeler, return_cams=return_cams)
            names = [class_key(c) for c in vocabulary.tagger.class_names]
            for d, t, s in zip(ok, tagged, labelled):
                preds[d['index']] = self._result(d, t, s, return_cams, return_mask, names)
        return [preds[d['index']] for d in inputs]

    def _result(self, data: dict, tagged: DataSample, labelled: Optional[SegDataSample],
                return_cams: bool, return_mask: bool, names: List[str]) -> dict:
        tag_indices = [int(i) for i in tagged.pred_label.tolist()]
        scores = tagged.pred_score.float().tolist()
        result = dict(index=data['index'], img_path=data['img_path'],
                      tags=[names[i] for i in tag_indices], tag_indices=tag_indices,
                      scores=dict(zip(names, scores)), error=None, _image=data['ori_img'],
                      _stem=data['stem'])
        if return_cams:
            order = [int(t) for t in labelled.metainfo['tags']]
            if order != tag_indices:
                raise RuntimeError(f'labeler tags {order} differ from tagger tags {tag_indices}')
            result['cams'] = labelled.cams.float().cpu().numpy()
        if return_mask:
            mask = labelled.pred_sem_seg.data[0].cpu().numpy()
            result['mask'] = mask.astype(np.uint8 if len(names) < 255 else np.int32)
        return result

    @staticmethod
    def _error_result(data: dict) -> dict:
        return dict(index=data['index'], img_path=data['img_path'], tags=[], tag_indices=[],
                    scores={}, error=str(data['load_error']), _image=None, _stem=data['stem'])

    def visualize(self, inputs: List[dict], preds: List[dict], out_dir: Optional[str] = None,
                  title: Optional[str] = None,
                  vocabulary: Optional['_CallVocabulary'] = None) -> List[Optional[list]]:
        """Write each image's pictures under ``out_dir`` (nothing without it).

        Returns:
            list: Per image, the (caption, relative path) pairs written, or
            None.
        """
        if out_dir is None:
            return [None] * len(preds)
        visuals = []
        for pred in preds:
            if pred['error'] is not None:
                visuals.append(None)
                continue
            label_names = self._mask_label_names(vocabulary) if 'mask' in pred else None
            visuals.append(
                save_result_images(out_dir, pred['_stem'], pred['_image'], pred, label_names,
                                   title=title))
        return visuals

    def _mask_label_names(self, vocabulary: Optional['_CallVocabulary']) -> Dict[int, str]:
        """Mask value -> name for legends.

        A labeler with a ``label_map`` writes another label space (e.g.
        COCO-Stuff-27) whose names it does not know; values are shown as is.
        """
        if getattr(self.labeler, 'label_map', None) is not None:
            return {v: f'label {v}' for v in range(256)}
        names = self.classes if vocabulary is None else [
            class_key(c) for c in vocabulary.tagger.class_names]
        return mask_label_names(names, bool(getattr(self.labeler, 'with_background', True)))

    def postprocess(self, preds: List[dict],
                    visualization: List[Optional[list]]) -> List[dict]:
        """Drop internal fields and attach the written pictures."""
        out = []
        for pred, vis in zip(preds, visualization):
            result = {k: v for k, v in pred.items() if not k.startswith('_')}
            if vis is not None:
                result['visualization'] = vis
            out.append(result)
        return out

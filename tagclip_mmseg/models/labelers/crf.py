"""Dense CRF post-processing of CAM probabilities (spec section 6.5).

Optional: needs the ``crf`` extra (``pip install -e .[crf]``, which installs
``pydensecrf2``, a maintained build of Krähenbühl's dense CRF bindings that
compiles with Cython 3). The CRF runs on the CPU, one image at a time, as in
the reference; it is the one stage here that is not batched on the device.
"""
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from mmseg.registry import MODELS

__all__ = ['DenseCRF', 'crf_reference_image']

#: deeplab-pytorch's BGR mean, subtracted from the CRF image in faithful mode.
CAFFE_BGR_MEAN = (104.008, 116.669, 122.675)


def crf_reference_image(rgb: np.ndarray) -> np.ndarray:
    """The image the reference gives the bilateral term (quirk 4).

    It is the BGR image minus the Caffe mean, cast to uint8, so negative values
    wrap around modulo 256. Reproduced exactly for faithful numbers.
    """
    bgr = rgb[..., ::-1].astype(np.float32) - np.asarray(CAFFE_BGR_MEAN, np.float32)
    return np.ascontiguousarray(bgr.astype(np.int64).astype(np.uint8))


@MODELS.register_module()
class DenseCRF(nn.Module):
    """Fully connected CRF over per-class probability maps.

    Args:
        iterations (int): Mean-field iterations (10).
        gaussian_sxy (float): Smoothness kernel width (1).
        gaussian_compat (float): Smoothness weight (3).
        bilateral_sxy (float): Appearance kernel spatial width (67).
        bilateral_srgb (float): Appearance kernel colour width (3).
        bilateral_compat (float): Appearance weight (4).
        confidence_thr (float, optional): Pixels whose largest marginal is below
            this become ignore (-1 here, 255 in the saved mask); CLIP-ES uses
            0.95 for training masks, ``None`` keeps every pixel.
        image_mode (str): 'faithful' feeds the reference's wrapped
            mean-subtracted BGR image; 'clean' the raw RGB image.
    """

    def __init__(self,
                 iterations: int = 10,
                 gaussian_sxy: float = 1.,
                 gaussian_compat: float = 3.,
                 bilateral_sxy: float = 67.,
                 bilateral_srgb: float = 3.,
                 bilateral_compat: float = 4.,
                 confidence_thr: Optional[float] = None,
                 image_mode: str = 'faithful') -> None:
        super().__init__()
        if image_mode not in ('faithful', 'clean'):
            raise ValueError(f"image_mode must be 'faithful' or 'clean', got {image_mode!r}")
        self.iterations = iterations
        self.gaussian = dict(sxy=gaussian_sxy, compat=gaussian_compat)
        self.bilateral = dict(sxy=bilateral_sxy, srgb=bilateral_srgb, compat=bilateral_compat)
        self.confidence_thr = confidence_thr
        self.image_mode = image_mode
        self._backend()  # fail at build time, not after an hour of CAMs

    @staticmethod
    def _backend():
        try:
            import pydensecrf.densecrf as dcrf
        except ImportError as e:
            raise ImportError('dense CRF needs the optional pydensecrf2 package: '
                              'pip install -e ".[crf]" (or pip install pydensecrf2), '
                              'or remove crf=... from the config') from e
        return dcrf

    def marginals(self, probs: np.ndarray, rgb: np.ndarray) -> np.ndarray:
        """Mean-field marginals (C, H, W) for probabilities and an RGB image."""
        dcrf = self._backend()
        C, H, W = probs.shape
        if rgb.shape[:2] != (H, W):
            raise ValueError(f'CRF image is {rgb.shape[:2]} but the maps are {(H, W)}')
        img = crf_reference_image(rgb) if self.image_mode == 'faithful' else np.ascontiguousarray(
            rgb.astype(np.uint8))
        d = dcrf.DenseCRF2D(W, H, C)
        unary = -np.log(np.clip(probs, 1e-5, 1.0)).reshape(C, -1).astype(np.float32)
        d.setUnaryEnergy(np.ascontiguousarray(unary))
        d.addPairwiseGaussian(**self.gaussian)
        d.addPairwiseBilateral(rgbim=img, **self.bilateral)
        q = d.inference(self.iterations)
        return np.asarray(q, dtype=np.float32).reshape(C, H, W)

    def forward(self, probs: Tensor, data_sample) -> Tensor:
        """Label index per pixel (-1 where below ``confidence_thr``).

        Args:
            probs (Tensor): (C, H, W) stacked [background, CAM_1..CAM_K].
            data_sample: Carries ``ori_img`` (RGB uint8, original size) in its
                metainfo; the dataset adds it when the config enables CRF.
        """
        rgb = data_sample.metainfo.get('ori_img')
        if rgb is None:
            raise KeyError("CRF needs the original image: add 'ori_img' to PackSegInputs' "
                           'meta_keys (keep_ori_img=True in the pseudo-label dataset config)')
        q = torch.from_numpy(self.marginals(probs.float().cpu().numpy(), np.asarray(rgb)))
        idx = q.argmax(dim=0)
        if self.confidence_thr is not None:
            idx = idx.masked_fill(q.amax(dim=0) < self.confidence_thr, -1)
        return idx.to(probs.device)

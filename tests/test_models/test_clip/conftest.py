"""Fixtures of the CLIP tests."""
import pytest


@pytest.fixture
def tiny_clip_arch():
    """A copy of :data:`~tagclip_mmseg.models.clip.random_clip.TINY_CLIP_ARCH`."""
    from tagclip_mmseg.models.clip.random_clip import TINY_CLIP_ARCH
    return dict(TINY_CLIP_ARCH)

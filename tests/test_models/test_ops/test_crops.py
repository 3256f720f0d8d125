"""Batched crop-and-resize equals F.interpolate applied to each crop."""
import pytest
import torch
import torch.nn.functional as F

from tagclip_mmseg.models.ops import crop_resize_bilinear, crop_resize_nearest


def random_boxes(n, h, w, gen):
    x1 = torch.randint(0, w - 1, (n, ), generator=gen)
    y1 = torch.randint(0, h - 1, (n, ), generator=gen)
    x2 = x1 + 1 + (torch.rand(n, generator=gen) * (w - x1 - 1)).long()
    y2 = y1 + 1 + (torch.rand(n, generator=gen) * (h - y1 - 1)).long()
    return torch.stack([x1, y1, x2, y2], dim=1)


@pytest.mark.parametrize('out', [(7, 7), (224, 224), (5, 9)])
def test_bilinear_matches_interpolate(out):
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 40, 56, generator=gen)
    boxes = random_boxes(12, 40, 56, gen)
    boxes[0] = torch.tensor([0, 0, 56, 40])  # the whole image
    boxes[1] = torch.tensor([55, 39, 56, 40])  # one pixel in the corner
    idx = torch.randint(0, 3, (12, ), generator=gen)
    got = crop_resize_bilinear(images, idx, boxes, out)
    for k in range(12):
        x1, y1, x2, y2 = boxes[k].tolist()
        want = F.interpolate(images[idx[k], None, :, y1:y2, x1:x2], size=out, mode='bilinear',
                             align_corners=False)[0]
        torch.testing.assert_close(got[k], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('out', [(14, 14), (3, 3), (20, 6)])
def test_nearest_matches_interpolate(out):
    gen = torch.Generator().manual_seed(1)
    maps = torch.rand(2, 24, 32, generator=gen) > 0.5
    boxes = random_boxes(10, 24, 32, gen)
    idx = torch.randint(0, 2, (10, ), generator=gen)
    got = crop_resize_nearest(maps, idx, boxes, out)
    for k in range(10):
        x1, y1, x2, y2 = boxes[k].tolist()
        crop = maps[idx[k], None, None, y1:y2, x1:x2].float()
        want = F.interpolate(crop, size=out, mode='nearest')[0, 0] > 0
        assert torch.equal(got[k], want)

"""PseudoLabelWriter, SkipExisting and the resume helpers."""
import json
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from tagclip_mmseg.evaluation import PseudoLabelWriter, format_summary
from tagclip_mmseg.records import read_label_png, remove_stale_temp_files
from tagclip_mmseg.resume import SkipExisting
from tagclip_mmseg.testing.checkout import repo_root, tool_env
from tagclip_mmseg.utils.class_names import voc_palette


def voc_colormap():
    return np.asarray(voc_palette(256), np.uint8)


def _sample(mask, img_id, cams=None, tags=(), **meta):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    mask = torch.as_tensor(np.asarray(mask), dtype=torch.long)
    sample = SegDataSample(metainfo=dict(img_id=img_id, img_path=f'/d/{img_id}.jpg',
                                         ori_shape=tuple(mask.shape), tags=list(tags), **meta))
    sample.pred_sem_seg = PixelData(data=mask[None])
    if cams is not None:
        sample.cams = torch.as_tensor(cams, dtype=torch.float16)
    return sample.to_dict()


def _mask(seed=0, shape=(7, 9)):
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 21, shape)
    mask[0, :3] = 255
    return mask


def _write(out_dir, samples, **kwargs):
    writer = PseudoLabelWriter(out_dir=str(out_dir), **kwargs)
    writer.process({}, samples)
    return writer.compute_metrics(writer.results)


def test_voc_colormap_known_entries():
    cmap = voc_colormap()
    assert cmap.shape == (256, 3) and cmap.dtype == np.uint8
    assert cmap[0].tolist() == [0, 0, 0]
    assert cmap[1].tolist() == [128, 0, 0]        # aeroplane
    assert cmap[15].tolist() == [192, 128, 128]   # person
    assert cmap[255].tolist() == [224, 224, 192]  # ignore


def test_png_palette_values_and_determinism(tmp_path):
    samples = [_sample(_mask(0), 'a'), _sample(_mask(1), 'b')]
    counts = _write(tmp_path / 'run1', samples)
    _write(tmp_path / 'run2', samples)
    assert counts == dict(written=2, skipped=0, failed=0)
    for name in ('a.png', 'b.png'):
        one, two = (tmp_path / 'run1' / name).read_bytes(), (tmp_path / 'run2' / name).read_bytes()
        assert one == two
    with Image.open(tmp_path / 'run1' / 'a.png') as img:
        assert img.mode == 'P' and img.size == (9, 7)
        assert np.array_equal(np.asarray(img), _mask(0))
        palette = np.asarray(img.getpalette()[:768], np.uint8).reshape(256, 3)
        assert np.array_equal(palette, voc_colormap())
    assert not [f for f in os.listdir(tmp_path / 'run1') if f.endswith('.tmp')]


def test_l_mode_option(tmp_path):
    _write(tmp_path, [_sample(_mask(2), 'a')], palette=None)
    with Image.open(tmp_path / 'a.png') as img:
        assert img.mode == 'L'
        assert np.array_equal(np.asarray(img), _mask(2))


def test_cams_npz(tmp_path):
    cams = np.random.default_rng(0).random((2, 7, 9))
    samples = [_sample(_mask(0), 'a', cams=cams, tags=[4, 14])]
    _write(tmp_path / 'r1', samples, save_cams=True)
    _write(tmp_path / 'r2', samples, save_cams=True)
    assert (tmp_path / 'r1' / 'a.npz').read_bytes() == (tmp_path / 'r2' / 'a.npz').read_bytes()
    with np.load(tmp_path / 'r1' / 'a.npz', allow_pickle=False) as data:
        assert data['keys'].tolist() == [4, 14]
        assert data['attn_highres'].dtype == np.float16
        np.testing.assert_array_equal(data['attn_highres'], cams.astype(np.float16))


def test_failed_and_precomputed_are_counted(tmp_path):
    samples = [_sample(_mask(0), 'ok'),
               _sample(_mask(0), 'bad', load_error='cannot identify image file\nline 2'),
               _sample(_mask(0), 'done', precomputed=True)]
    counts = _write(tmp_path, samples)
    assert counts == dict(written=1, skipped=1, failed=1)
    assert not (tmp_path / 'done.png').exists() and not (tmp_path / 'bad.png').exists()
    assert (tmp_path / 'failed.txt').read_text() == \
        'bad\t/d/bad.jpg\tcannot identify image file line 2\n'
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert summary['failed'] == 1 and summary['failed_images'][0]['img_id'] == 'bad'


def test_size_mismatch_is_an_error(tmp_path):
    sample = _sample(_mask(0), 'a')
    sample['ori_shape'] = (14, 18)
    writer = PseudoLabelWriter(out_dir=str(tmp_path))
    with pytest.raises(ValueError, match='original size'):
        writer.process({}, [sample])


def test_unwritable_out_dir(tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('x')
    with pytest.raises(PermissionError, match='a_file'):
        PseudoLabelWriter(out_dir=str(blocker / 'pseudo')).begin_run()


@pytest.mark.skipif(hasattr(os, 'geteuid') and os.geteuid() == 0,
                    reason='root ignores directory permissions')
def test_read_only_out_dir(tmp_path):
    folder = tmp_path / 'ro'
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError):
            PseudoLabelWriter(out_dir=str(folder)).begin_run()
    finally:
        folder.chmod(0o700)


def test_crash_during_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import tagclip_mmseg.utils.io as io_mod

    def killed(*args, **kwargs):
        raise KeyboardInterrupt('killed between write and rename')

    writer = PseudoLabelWriter(out_dir=str(tmp_path))
    writer.begin_run()
    monkeypatch.setattr(io_mod.os, 'replace', killed)
    with pytest.raises(KeyboardInterrupt):
        writer.process({}, [_sample(_mask(0), 'a')])
    # The live writer's run lock and the record of the mask's source (which
    # matches no PNG), nothing else.
    assert sorted(os.listdir(tmp_path)) == ['.lock', '.sources.rank0.jsonl']


def test_stale_temp_files_are_removed_at_start(tmp_path):
    stale = tmp_path / '.a.png.abcd1234.tmp'
    young = tmp_path / '.b.png.wxyz9876.tmp'
    foreign = tmp_path / '.notes.md.abcd1234.tmp'
    for path in (stale, young, foreign):
        path.write_bytes(b'partial')
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(foreign, (old, old))
    PseudoLabelWriter(out_dir=str(tmp_path)).begin_run()
    assert not stale.exists()
    assert young.exists() and foreign.exists()
    assert remove_stale_temp_files(str(tmp_path), min_age_s=0) == [str(young)]


def _write_png(path, mask):
    Image.fromarray(np.asarray(mask, np.uint8)).save(path)


def test_skip_existing_marks_and_loads(tmp_path):
    mask = _mask(3)
    _write_png(tmp_path / 'a.png', mask)
    calls = []

    def load(results):
        calls.append(results['img_path'])
        results['img'] = np.ones((5, 5, 3), np.uint8)
        return results

    skip = SkipExisting(out_dir=str(tmp_path), transforms=[load], placeholder_size=16)
    done = skip(dict(img_path='/d/a.jpg'))  # id from the file name
    assert done['precomputed'] is True and calls == []
    assert np.array_equal(done['pred_seg_map'], mask)
    assert done['ori_shape'] == mask.shape and done['img'].shape == (16, 16, 3)
    todo = skip(dict(img_id='b', img_path='/d/b.jpg'))
    assert todo['precomputed'] is False and calls == ['/d/b.jpg']
    assert todo['img'].shape == (5, 5, 3)


def test_skip_existing_recomputes_corrupt_png(tmp_path):
    _write_png(tmp_path / 'a.png', _mask(3))
    data = (tmp_path / 'a.png').read_bytes()
    (tmp_path / 'a.png').write_bytes(data[:len(data) // 2])
    assert read_label_png(str(tmp_path / 'a.png')) is None
    out = SkipExisting(out_dir=str(tmp_path))(dict(img_id='a'))
    assert out['precomputed'] is False
    Image.new('RGB', (4, 4)).save(tmp_path / 'rgb.png')  # not an index image
    assert read_label_png(str(tmp_path / 'rgb.png')) is None


def test_skip_existing_require_cams(tmp_path):
    _write_png(tmp_path / 'a.png', _mask(3))
    skip = SkipExisting(out_dir=str(tmp_path), require_cams=True)
    assert skip(dict(img_id='a'))['precomputed'] is False


def test_resume_round_trip(tmp_path):
    """A second run over the same images skips what the first one wrote."""
    masks = {f'im{i}': _mask(i) for i in range(3)}
    _write(tmp_path, [_sample(m, k) for k, m in masks.items() if k != 'im2'])
    skip = SkipExisting(out_dir=str(tmp_path))
    samples = []
    for img_id, mask in masks.items():
        results = skip(dict(img_id=img_id))
        meta = dict(precomputed=results['precomputed'])
        samples.append(_sample(results.get('pred_seg_map', mask), img_id, **meta))
    assert _write(tmp_path, samples) == dict(written=1, skipped=2, failed=0)


def test_skip_existing_from_config(tmp_path):
    from mmseg.registry import TRANSFORMS
    t = TRANSFORMS.build(dict(type='SkipExisting', out_dir=str(tmp_path),
                              transforms=[dict(type='LoadImageFromFile')]))
    assert isinstance(t, SkipExisting)
    img = tmp_path / 'src.png'
    Image.new('RGB', (6, 4), (10, 20, 30)).save(img)
    out = t(dict(img_path=str(img)))
    assert out['precomputed'] is False and out['img'].shape == (4, 6, 3)


def test_writer_through_evaluator(tmp_path):
    from mmengine.evaluator import Evaluator
    from mmseg.registry import METRICS
    writer = METRICS.build(dict(type='PseudoLabelWriter', out_dir=str(tmp_path / 'pl')))
    seg = METRICS.build(dict(type='CLSSegIoUMetric', num_classes=21, prefix='seg'))
    evaluator = Evaluator([writer, seg])
    sample = _sample(_mask(0), 'a')
    from mmengine.structures import PixelData
    sample['gt_sem_seg'] = PixelData(data=torch.as_tensor(_mask(0))[None]).to_dict()
    evaluator.process([sample])
    out = evaluator.evaluate(1)
    assert out['pseudo_label/written'] == 1 and out['seg/mIoU'] == pytest.approx(100.0)
    assert (tmp_path / 'pl' / 'a.png').is_file()


def test_format_summary():
    line = format_summary({'written': 10, 'skipped': 2, 'failed': 1}, 4.0)
    assert line == '13 images: 10 written, 2 skipped, 1 failed in 4.0s (3.25 images/s)'
    assert '1h01m05s' in format_summary({'written': 1}, 3665)
    assert '(n/a images/s)' in format_summary({'written': 0}, 0)


_DIST_SCRIPT = r"""
import json, sys
import numpy as np, torch, torch.distributed as dist
from mmengine.evaluator import Evaluator
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample
from tagclip_mmseg.evaluation import PseudoLabelWriter

rank, world, store, out_dir = int(sys.argv[1]), 2, sys.argv[2], sys.argv[3]
dist.init_process_group('gloo', init_method='file://' + store, rank=rank, world_size=world)
num = 5
# DefaultSampler(round_up=True): rank r takes r, r+2, ...; the last rank pads with image 0
indices = (list(range(num)) + [0])[rank::world]
samples = []
for i in indices:
    s = SegDataSample(metainfo=dict(img_id=f'im{i}', img_path=f'/d/im{i}.jpg',
                                    load_error='bad' if i == 3 else None))
    s.pred_sem_seg = PixelData(data=torch.full((1, 3, 4), i, dtype=torch.long))
    samples.append(s)
evaluator = Evaluator([PseudoLabelWriter(out_dir=out_dir)])
evaluator.process(samples)
print(json.dumps(evaluator.evaluate(num)))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_ranks_write_their_share_and_rank0_counts_all(tmp_path):
    import subprocess
    import sys
    script = tmp_path / 'worker.py'
    script.write_text(_DIST_SCRIPT)
    out_dir = tmp_path / 'pl'
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(tmp_path / 'store'),
                               str(out_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=tool_env(repo_root(__file__))) for r in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-2000:]
    for out, _ in outputs:  # the counts are broadcast to every rank
        counts = json.loads(out.strip().splitlines()[-1])
        assert counts == {'pseudo_label/written': 4, 'pseudo_label/skipped': 0,
                          'pseudo_label/failed': 1}
    assert sorted(f for f in os.listdir(out_dir) if f.endswith('.png')) == \
        ['im0.png', 'im1.png', 'im2.png', 'im4.png']
    assert (out_dir / 'failed.txt').read_text() == 'im3\t/d/im3.jpg\tbad\n'


def test_pseudo_label_writer_refuses_non_finite_cams(tmp_path):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    from tagclip_mmseg.evaluation import PseudoLabelWriter
    sample = SegDataSample(metainfo=dict(img_id='a', img_path='/d/a.jpg', ori_shape=(3, 4),
                                         tags=[2]))
    sample.pred_sem_seg = PixelData(data=torch.zeros(1, 3, 4, dtype=torch.long))
    cams = torch.full((1, 3, 4), 0.25)
    cams[0, 1, 2] = float('nan')
    sample.set_metainfo(dict(cams=cams))
    writer = PseudoLabelWriter(out_dir=str(tmp_path), save_cams=True)
    with pytest.raises(ValueError, match='NaN or inf'):
        writer.process({}, [sample.to_dict()])
    assert not (tmp_path / 'a.npz').exists()

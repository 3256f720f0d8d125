"""What a resumed run may reuse.

Derived settings, whole-file checkpoint hashes and edited images.

* The fingerprint takes every constructor argument of every model and
  transform of this package but the one list ``NOT_RESULT_SETTINGS``; the
  walk below is derived from the registries, so a new argument cannot be
  forgotten.
* A checkpoint is identified by its whole content, not by its name, size,
  modification time and first and last MiB.
* An image edited between a kill and the resume is computed again, in
  tagging and in pseudo-labelling.
"""
import json
import os
import os.path as osp
import shutil
import struct

import numpy as np
import pytest
import torch
from mmpretrain.structures import DataSample
from mmseg.registry import MODELS, TRANSFORMS
from PIL import Image

import tagclip_mmseg  # noqa: F401  (registers everything)
from tagclip_mmseg.evaluation import PseudoLabelWriter, TagFileWriter
from tagclip_mmseg.records import journal_path
from tagclip_mmseg.resume import (NOT_RESULT_SETTINGS, SkipExisting, SkipTagged, model_settings,
                                  resume_fingerprint, settings_of)
from tagclip_mmseg.testing.models import build_labeler, build_tagger
from tagclip_mmseg.utils import file_sha256, init_args, init_parameters

CLASSES = ['c0', 'c1', 'c2']
TAGGER = dict(class_names=CLASSES, background_words=['sky'], templates=['a photo of a {}.'],
              avg_layers=(0, 1), vote_k=2)


def registered():
    """Every model and transform this package registers, with its builder."""
    for registry in (MODELS, TRANSFORMS):
        for name, builder in sorted(registry.module_dict.items()):
            if getattr(builder, '__module__', '').startswith('tagclip_mmseg.'):
                yield name, builder


# ------------------------------------------------------- 2: derived settings
def test_every_constructor_argument_changes_the_fingerprint_or_is_exempt():
    walked = set()
    for name, builder in registered():
        base = settings_of(dict(type=name))
        for arg in init_parameters(builder):
            walked.add(f'{name}.{arg}')
            changed = settings_of(dict(type=name, **{arg: f'<{name}.{arg} changed>'}))
            assert (changed == base) == (arg in NOT_RESULT_SETTINGS), (name, arg)
    # The walk reaches what the models forward to their bases and nested builders.
    for arg in ('CLIPDataPreprocessor.bgr_to_rgb', 'TagCLIP.tag_ratio', 'TagCLIP.autocast',
                'CLIPESPseudoLabeler.crf', 'DenseCRF.bilateral_srgb', 'DenseCRF.workers',
                'LoadImageRobust.exif_transpose', 'ResizeToPatchMultiple.max_tokens',
                'SkipExisting.transforms', 'PretrainedCLIP.dtype'):
        assert arg in walked, arg
    # Every exempt name is an argument or a transform somewhere (no stale entries).
    names = {w.split('.')[1] for w in walked} | {n for n, _ in registered()} | {
        'PackInputs', 'PackSegInputs', 'LoadAnnotations'}
    assert set(NOT_RESULT_SETTINGS) <= names, set(NOT_RESULT_SETTINGS) - names


def _objects(model):
    """The model and every sub-object that records its arguments."""
    found = [model]
    for module in model.modules():
        if module is not model and init_args(module) is not None:
            found.append(module)
    return found


def test_built_models_record_and_fingerprint_every_argument(tiny_clip):
    labeler = build_labeler(tiny_clip, class_names=CLASSES, templates=['a photo of a {}.'],
                            caa_layers=(0, 1), crf=dict(iterations=2),
                            tagger=dict(type='TagCLIP', **TAGGER, clip=tiny_clip))
    objects = _objects(labeler)
    assert {type(o).__name__ for o in objects} >= {'CLIPESPseudoLabeler', 'TagCLIP', 'DenseCRF',
                                                  'CLIPDataPreprocessor'}
    for obj in objects:
        params = set(init_parameters(type(obj)))
        assert set(init_args(obj)) == params, type(obj).__name__
        recorded = set(settings_of(obj)) - {'type'}
        assert recorded == {p for p in params if p not in NOT_RESULT_SETTINGS}, type(obj)
    settings = model_settings(labeler)
    assert settings['data_preprocessor']['bgr_to_rgb'] is False
    assert settings['crf']['iterations'] == 2 and 'workers' not in settings['crf']
    assert settings['tagger']['tag_ratio'] == 0.5 and settings['tagger']['class_names'] == CLASSES


@pytest.mark.parametrize('change', [
    dict(data_preprocessor=dict(type='CLIPDataPreprocessor', bgr_to_rgb=True)),
    dict(data_preprocessor=dict(type='CLIPDataPreprocessor', std=(60., 60., 60.))),
    dict(tag_ratio=0.4), dict(cwr_region_thr=0.3), dict(quirks='fixed'), dict(autocast='bf16'),
    dict(truncate_prompts=True),
])
def test_a_setting_that_decides_scores_changes_the_fingerprint(tiny_clip, change):
    assert resume_fingerprint(build_tagger(tiny_clip, **dict(TAGGER, **change))) != \
        resume_fingerprint(build_tagger(tiny_clip, **TAGGER))


def test_exempt_settings_and_argument_spelling_keep_the_fingerprint(tiny_clip, tmp_path):
    base = resume_fingerprint(build_tagger(tiny_clip, **TAGGER))
    for same in (dict(cwr_batch_size=3), dict(images_per_forward=2),
                 dict(text_cache_dir=str(tmp_path)),
                 dict(data_preprocessor=dict(type='CLIPDataPreprocessor')),
                 dict(avg_layers=[1, 0, 1])):
        assert resume_fingerprint(build_tagger(tiny_clip, **dict(TAGGER, **same))) == base, same
    other = build_tagger(tiny_clip, **TAGGER)
    other.set_vocabulary(['c0', 'c1', 'dog'])
    assert resume_fingerprint(other) != base
    labeler = build_labeler(tiny_clip, class_names=CLASSES, caa_layers=(0, 1), crf=dict())
    for change, equal in ((dict(crf=dict(workers=1)), True),
                          (dict(crf=dict(bilateral_srgb=5.)), False),
                          (dict(crf=dict(), label_map=[0, 1, 2, 3]), False)):
        changed = build_labeler(tiny_clip, class_names=CLASSES, caa_layers=(0, 1), **change)
        assert (resume_fingerprint(changed) == resume_fingerprint(labeler)) == equal, change


def _tag_journal(tmp_path, fingerprint, img_path):
    """A killed tagging run: one image journaled under ``fingerprint``, no tags file."""
    out = str(tmp_path / 'tags.txt')
    writer = TagFileWriter(out_file=out)
    writer.set_fingerprint(fingerprint)
    sample = DataSample(metainfo=dict(img_id='a', img_path=img_path, ori_shape=(4, 6)))
    sample.set_pred_score(torch.tensor([0.9, 0.1, 0.35])).set_pred_label(torch.tensor([0]))
    writer.process({}, [sample.to_dict()])  # journaled at once; the kill comes next
    return out


def test_killed_tagging_run_resumed_with_other_bgr_to_rgb_recomputes(tiny_clip, tmp_path):
    image = tmp_path / 'a.jpg'
    Image.new('RGB', (6, 4), (250, 10, 10)).save(image)
    pipeline = [SkipTagged(transforms=[dict(type='LoadImageRobust')])]
    rgb = build_tagger(tiny_clip, **TAGGER)
    bgr = build_tagger(tiny_clip, **TAGGER,
                       data_preprocessor=dict(type='CLIPDataPreprocessor', bgr_to_rgb=True))
    out = _tag_journal(tmp_path, resume_fingerprint(rgb, pipeline), str(image))
    assert osp.isfile(journal_path(out, 0)) and not osp.isfile(out)
    assert pipeline[0].set_journal(out, resume_fingerprint(rgb, pipeline)) == 1  # same run
    assert pipeline[0].set_journal(out, resume_fingerprint(bgr, pipeline)) == 0
    results = pipeline[0](dict(img_id='a', img_path=str(image)))
    assert results['precomputed'] is False and results['img'].shape == (4, 6, 3)
    # The pipeline counts too: another orientation rule is another run.
    turned = [SkipTagged(transforms=[dict(type='LoadImageRobust', exif_transpose=False)])]
    assert resume_fingerprint(rgb, turned) != resume_fingerprint(rgb, pipeline)
    # ... but not where results go or how errors are handled.
    quiet = [SkipTagged(transforms=[dict(type='LoadImageRobust', on_error='raise')],
                        placeholder_size=8)]
    assert resume_fingerprint(rgb, quiet) == resume_fingerprint(rgb, pipeline)


# ----------------------------------------------- 3: checkpoint content hash
def _patched_copy(src, dst, key):
    """``src`` with 1 added to the fp32 tensor ``key`` in place.

    The same size, header and first and last MiB, other content.
    """
    data = bytearray(open(src, 'rb').read())
    size = struct.unpack('<Q', data[:8])[0]
    start, end = json.loads(data[8:8 + size])[key]['data_offsets']
    lo, hi = 8 + size + start, 8 + size + end
    data[lo:hi] = (np.frombuffer(bytes(data[lo:hi]), np.float32) + 1).tobytes()
    os.makedirs(osp.dirname(dst))
    with open(dst, 'wb') as f:
        f.write(data)
    return data


def test_checkpoints_equal_in_name_size_and_mtime_differ(tmp_path, tiny_clip):
    """As ``tar -x``, ``cp -p`` and ``rsync -a`` leave them.

    The change sits in the middle of the file (a text-encoder weight, so the embeddings differ).
    """
    from tagclip_mmseg.models.clip import checkpoint_fingerprint, load_clip, save_clip_state_dict
    from tagclip_mmseg.models.clip.text_classifier import build_text_classifier
    a, b = str(tmp_path / 'a' / 'clip.safetensors'), str(tmp_path / 'b' / 'clip.safetensors')
    os.makedirs(tmp_path / 'a')
    save_clip_state_dict(tiny_clip.state_dict(), a)
    patched = _patched_copy(a, b, 'transformer.resblocks.0.mlp.c_fc.weight')
    original = open(a, 'rb').read()
    mib = 1 << 20
    assert patched[:mib] == original[:mib] and patched[-mib:] == original[-mib:]
    for path in (a, b):
        os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    assert osp.getsize(a) == osp.getsize(b) and os.stat(a).st_mtime_ns == os.stat(b).st_mtime_ns
    assert checkpoint_fingerprint(a) != checkpoint_fingerprint(b)
    cache = str(tmp_path / 'text_cache')
    embeddings = [build_text_classifier(load_clip(p), ['cat', 'dog'], ['a {}.'], cache_dir=cache)
                  for p in (a, b)]
    assert len(os.listdir(cache)) == 2
    assert not torch.allclose(embeddings[0], embeddings[1])
    # The same content elsewhere is the same checkpoint.
    copy = shutil.copy(a, tmp_path / 'copy.safetensors')
    assert file_sha256(copy) == file_sha256(a) != file_sha256(b)


def test_file_sha256_hashes_a_file_once_per_version(tmp_path, monkeypatch):
    import hashlib

    from tagclip_mmseg.utils import hashing
    monkeypatch.setenv('TAGCLIP_MMSEG_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setattr(hashing, '_DISK_MIN_BYTES', 1000)  # a checkpoint-sized file
    path = tmp_path / 'w.bin'
    path.write_bytes(b'x' * 3000)
    expected = hashlib.sha256(b'x' * 3000).hexdigest()
    assert file_sha256(str(path)) == expected
    assert len(list((tmp_path / 'cache' / 'file_sha256').rglob('*.txt'))) == 1
    hashing._MEMORY.clear()  # a new process: the on-disk record answers
    reads = []
    real_open = open
    monkeypatch.setattr('builtins.open', lambda p, *a, **k: reads.append(p) or real_open(p, *a,
                                                                                         **k))
    assert file_sha256(str(path)) == expected and str(path) not in reads
    monkeypatch.setattr('builtins.open', real_open)
    # Overwritten in place with the old modification time restored (cp -p): read again.
    stat = os.stat(path)
    path.write_bytes(b'y' * 3000)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_sha256(str(path)) == hashlib.sha256(b'y' * 3000).hexdigest()


# ------------------------------------------------ 8: images edited meanwhile
def _edit(image, colour):
    """Rewrite ``image`` (same size in pixels) and move its modification time."""
    stat = os.stat(image)
    Image.new('RGB', (6, 4), colour).save(image)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_tagging_resume_recomputes_an_image_edited_since(tmp_path):
    image = tmp_path / 'a.jpg'
    Image.new('RGB', (6, 4), (250, 10, 10)).save(image)
    out = _tag_journal(tmp_path, 'fp', str(image))
    skip = SkipTagged(transforms=[dict(type='LoadImageRobust')])
    skip.set_journal(out, 'fp')
    assert skip(dict(img_id='a', img_path=str(image)))['precomputed'] is True
    _edit(image, (10, 10, 250))
    results = skip(dict(img_id='a', img_path=str(image)))
    assert results['precomputed'] is False and results['img'][0, 0, 2] > 200


def _mask_sample(img_id, img_path, value):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    sample = SegDataSample(metainfo=dict(img_id=img_id, img_path=img_path, ori_shape=(4, 6)))
    sample.pred_sem_seg = PixelData(data=torch.full((1, 4, 6), value, dtype=torch.long))
    return sample


def test_pseudo_label_resume_recomputes_an_image_edited_since(tmp_path):
    images, out = tmp_path / 'images', tmp_path / 'out'
    images.mkdir()
    paths = {}
    for img_id in ('a', 'b'):
        paths[img_id] = str(images / f'{img_id}.jpg')
        Image.new('RGB', (6, 4), (250, 10, 10)).save(paths[img_id])
    writer = PseudoLabelWriter(out_dir=str(out))
    writer.process({}, [_mask_sample(i, paths[i], 3).to_dict() for i in ('a', 'b')])
    writer.evaluate(2)
    skip = SkipExisting(out_dir=str(out), transforms=[dict(type='LoadImageRobust')])
    assert skip(dict(img_id='a', img_path=paths['a']))['precomputed'] is True
    _edit(paths['a'], (10, 10, 250))
    fresh = SkipExisting(out_dir=str(out), transforms=[dict(type='LoadImageRobust')])
    assert fresh(dict(img_id='a', img_path=paths['a']))['precomputed'] is False
    assert fresh(dict(img_id='b', img_path=paths['b']))['precomputed'] is True
    # A mask without a record (written by hand, or a kill between PNG and record).
    Image.fromarray(np.full((4, 6), 2, np.uint8)).save(out / 'c.png')
    Image.new('RGB', (6, 4)).save(images / 'c.jpg')
    assert fresh(dict(img_id='c', img_path=str(images / 'c.jpg')))['precomputed'] is False
    # The recomputed mask and its new record are kept by the next resume;
    # a copied folder still resumes (the PNG is named by its content).
    writer = PseudoLabelWriter(out_dir=str(out))
    writer.process({}, [_mask_sample('a', paths['a'], 1).to_dict()])
    writer.evaluate(1)
    copy = shutil.copytree(out, tmp_path / 'copy')
    for folder in (out, copy):
        again = SkipExisting(out_dir=str(folder), transforms=[dict(type='LoadImageRobust')])
        results = again(dict(img_id='a', img_path=paths['a']))
        assert results['precomputed'] is True and results['pred_seg_map'].max() == 1

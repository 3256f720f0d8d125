"""Resumable tagging runs: the journal, SkipTagged, TagCLIP.reuse_result, end to end.

A tagging run journals each image as soon as it is tagged; a run killed with
SIGKILL and started again reuses the journaled images (exact scores) and ends
with files byte-identical to an uninterrupted run's, and the same metrics.
"""
import glob
import importlib.util
import json
import os
import os.path as osp
import random
import re
import signal
import subprocess
from argparse import Namespace
from functools import partial

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmpretrain.structures import DataSample
from PIL import Image

from tagclip_mmseg.evaluation import (SkipTagged, TagFileWriter, TagJournal, decode_scores,
                                      encode_scores, read_journals)
from tagclip_mmseg.evaluation.tag_journal import journal_path, journal_paths
from tagclip_mmseg.testing.models import build_tagger

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
NUM_CLASSES = 5


def _record(img_id, seed=0):
    """A journal record with float32 scores that need every bit to round-trip."""
    scores = torch.rand(NUM_CLASSES, generator=torch.Generator().manual_seed(seed)) / 3
    return dict(img_id=img_id, img_path=f'/d/{img_id}.jpg', ori_shape=[4, 6], tags=[1, 3],
                scores=encode_scores(scores))


def _lines(path):
    return open(path, 'rb').read().split(b'\n')


# ------------------------------------------------------------------ journal
@pytest.mark.parametrize('dtype', [torch.float16, torch.float32, torch.float64])
def test_scores_round_trip_exactly(dtype):
    scores = torch.cat([torch.rand(50, dtype=torch.float64) / 7,
                        torch.tensor([0.0, 1e-30, 1 / 3, float('inf')], dtype=torch.float64)])
    scores = scores.to(dtype)
    decoded = decode_scores(json.loads(json.dumps(encode_scores(scores))))
    assert decoded.dtype == dtype and torch.equal(decoded, scores)


def test_torn_last_line_is_ignored_and_not_merged_into_the_next_record(tmp_path):
    out = str(tmp_path / 'tags.txt')
    journal = TagJournal(journal_path(out, 0), 'fp')
    for i in range(3):
        journal.append(_record(f'img{i}', i))
    journal.close()
    with open(journal_path(out, 0), 'ab') as f:  # a kill in the middle of a line
        f.write(json.dumps(_record('img3')).encode()[:40])
    assert sorted(read_journals(out, 'fp')) == ['img0', 'img1', 'img2']
    # The restarted run continues the journal on a fresh line.
    journal = TagJournal(journal_path(out, 0), 'fp')
    journal.append(_record('img4', 4))
    journal.close()
    records = read_journals(out, 'fp')
    assert sorted(records) == ['img0', 'img1', 'img2', 'img4']
    assert records['img4'] == json.loads(json.dumps(_record('img4', 4)))
    # Zeros left by a power loss are not records either.
    with open(journal_path(out, 0), 'ab') as f:
        f.write(b'\0' * 100)
    assert len(read_journals(out, 'fp')) == 4


def test_journal_of_other_settings_is_ignored_then_replaced(tmp_path, monkeypatch):
    from tagclip_mmseg.evaluation import tag_journal
    logged = []
    monkeypatch.setattr(tag_journal, 'print_log', lambda msg, **kwargs: logged.append(msg))
    out = str(tmp_path / 'tags.txt')
    journal = TagJournal(journal_path(out, 0), 'old settings')
    journal.append(_record('img0'))
    journal.close()
    assert read_journals(out, 'new settings') == {}
    assert len(logged) == 1 and 'ignoring tagging journal' in logged[0]
    journal = TagJournal(journal_path(out, 0), 'new settings')
    journal.append(_record('img1'))
    journal.close()
    assert list(read_journals(out, 'new settings')) == ['img1']
    assert len(_lines(journal_path(out, 0))) == 3  # header, one record, final newline


def test_journals_of_every_rank_are_merged(tmp_path):
    out = str(tmp_path / 'tags.txt')
    for rank in (0, 1, 3):
        journal = TagJournal(journal_path(out, rank), 'fp')
        journal.append(_record(f'img{rank}', rank))
        journal.close()
    # Look-alikes of other outputs are not journals of this one.
    (tmp_path / 'tags.txt2.journal.rank0.jsonl').write_text('x')
    (tmp_path / 'tags.txt.journal.rank0.jsonl.bak').write_text('x')
    assert [osp.basename(p) for p in journal_paths(out)] == [
        f'tags.txt.journal.rank{r}.jsonl' for r in (0, 1, 3)]
    assert sorted(read_journals(out, 'fp')) == ['img0', 'img1', 'img3']


# ------------------------------------------------------- writer, transform
def _sample(img_id, seed, resumed=None):
    """A tagged sample (float32 scores, tags and a label), as the model returns it.

    With ``resumed`` (SkipTagged's output for the image), the prediction is
    the restored one, as ``TagCLIP.reuse_result`` sets it.
    """
    scores = torch.rand(NUM_CLASSES, generator=torch.Generator().manual_seed(seed))
    meta = dict(img_id=img_id, img_path=f'/d/{img_id}.jpg', ori_shape=(4 + seed, 6))
    if resumed is not None:
        meta['precomputed'] = True
        scores = resumed['pred_record']['pred_score']
    sample = DataSample(metainfo=meta).set_pred_score(scores)
    sample.set_pred_label((scores > 0.5).nonzero().flatten())
    return sample.set_gt_label(torch.tensor([seed % NUM_CLASSES]))


def _evaluate(out_dir, samples, fingerprint='fp'):
    """Files and metrics of a TagFileWriter + TaggingMetric evaluation."""
    from mmengine.evaluator import Evaluator
    writer = TagFileWriter(out_file=str(out_dir / 'tags.txt'),
                           scores_file=str(out_dir / 'scores.jsonl'))
    writer.set_fingerprint(fingerprint)
    from mmseg.registry import METRICS
    evaluator = Evaluator([writer, METRICS.build(dict(type='TaggingMetric'))])
    evaluator.process(samples)
    metrics = evaluator.evaluate(len(samples))
    files = {p.name: p.read_bytes() for p in out_dir.iterdir() if p.is_file()}
    return files, metrics


def test_resumed_run_writes_the_same_bytes_and_metrics(tmp_path, tagging_metrics_oracle):
    ids = [f'img{i}' for i in range(8)]
    reference, ref_metrics = _evaluate(tmp_path / 'ref',
                                       [_sample(i, s) for s, i in enumerate(ids)])
    # the metrics themselves: docs/method.md §5 computed independently from the samples
    scores = np.stack([_sample(i, s).pred_score.numpy() for s, i in enumerate(ids)])
    labels = np.zeros(scores.shape, bool)
    labels[np.arange(len(ids)), np.arange(len(ids)) % NUM_CLASSES] = True
    for key, value in tagging_metrics_oracle(scores, labels, 0.5).items():
        assert ref_metrics[key] == pytest.approx(value, abs=1e-9), key
    assert sorted(reference) == ['scores.jsonl', 'tags.skipped.txt', 'tags.txt']  # no journal

    # A run killed after journaling the first five images.
    out = tmp_path / 'out'
    killed = TagFileWriter(out_file=str(out / 'tags.txt'), scores_file=str(out / 'scores.jsonl'))
    killed.set_fingerprint('fp')
    killed.process({}, [_sample(i, s).to_dict() for s, i in enumerate(ids[:5])])
    assert not (out / 'tags.txt').exists()
    assert len(_lines(journal_path(str(out / 'tags.txt'), 0))) == 7

    skip = SkipTagged(transforms=[])
    assert skip.set_journal(str(out / 'tags.txt'), 'fp') == 5
    samples = []
    for seed, img_id in enumerate(ids):
        results = skip(dict(img_id=img_id, img_path=f'/d/{img_id}.jpg'))
        samples.append(_sample(img_id, seed, results if results['precomputed'] else None))
    assert sum(s.metainfo.get('precomputed', False) for s in samples) == 5
    files, metrics = _evaluate(out, samples[::-1])
    assert files == reference
    assert metrics.pop('tags/num_resumed') == 5 and ref_metrics.pop('tags/num_resumed') == 0
    assert metrics == ref_metrics


def test_skip_tagged_short_cuts_journaled_images_only(tmp_path):
    out = str(tmp_path / 'tags.txt')
    journal = TagJournal(journal_path(out, 0), 'fp')
    journal.append(_record('done'))
    journal.close()
    calls = []

    def load(results):
        calls.append(results['img_id'])
        return dict(results, img=np.ones((32, 48, 3), np.uint8))

    skip = SkipTagged(transforms=[load])
    # Not armed (no TagResumeHook): everything is computed.
    assert skip(dict(img_id='done', img_path='/d/done.jpg'))['precomputed'] is False
    skip.set_journal(out, 'fp')
    results = skip(dict(img_id='done', img_path='/d/done.jpg'))
    assert results['precomputed'] is True and results['img'].shape == (16, 16, 3)
    assert results['ori_shape'] == (4, 6)
    expected = decode_scores(_record('done')['scores'])
    assert torch.equal(results['pred_record']['pred_score'], expected)
    assert results['pred_record']['pred_label'].tolist() == [1, 3]
    for img_id, path in (('new', '/d/new.jpg'), ('done', '/elsewhere/done.jpg')):
        results = skip(dict(img_id=img_id, img_path=path))
        assert results['precomputed'] is False and results['img'].shape == (32, 48, 3)
    assert calls == ['done', 'new', 'done']


def test_resume_needs_the_keys_packed():
    from mmpretrain.datasets.transforms import PackInputs

    from tagclip_mmseg.engine import TagResumeHook
    TagResumeHook._check_packed([PackInputs(meta_keys=('img_id', 'precomputed', 'pred_record'))])
    with pytest.raises(ValueError, match='pred_record'):
        TagResumeHook._check_packed([PackInputs(meta_keys=('img_id', 'precomputed'))])


# -------------------------------------------------------------------- model
#: ``_tagger(clip_module, **settings)``.
_tagger = partial(build_tagger, class_names=[f'c{i}' for i in range(NUM_CLASSES)],
                  background_words=['sky'], templates=['a photo of a {}.'], avg_layers=(0, 1),
                  vote_k=2)


def test_reuse_result_restores_the_journaled_prediction(tiny_clip):
    tagger = _tagger(tiny_clip)
    record = _record('img0')
    prediction = dict(pred_score=decode_scores(record['scores']),
                      pred_label=torch.tensor(record['tags']))
    sample = DataSample(metainfo=dict(img_id='img0', precomputed=True, pred_record=prediction))
    [out] = tagger.predict([torch.zeros(3, 16, 16)], [sample])
    assert torch.equal(out.pred_score, prediction['pred_score'])
    assert out.pred_label.tolist() == [1, 3]
    bad = dict(prediction, pred_score=torch.zeros(NUM_CLASSES + 1))
    with pytest.raises(ValueError, match='journal'):
        tagger.predict([torch.zeros(3, 16, 16)],
                       [DataSample(metainfo=dict(precomputed=True, pred_record=bad))])


def test_resume_fingerprint_follows_what_decides_the_scores(tiny_clip):
    base = _tagger(tiny_clip).resume_fingerprint()
    assert _tagger(tiny_clip, cwr_batch_size=3).resume_fingerprint() == base
    assert _tagger(tiny_clip, tag_ratio=0.4).resume_fingerprint() != base
    assert _tagger(tiny_clip, mode='clean').resume_fingerprint() != base
    other = _tagger(tiny_clip)
    other.set_vocabulary(['c0', 'c1', 'c2', 'c3', 'dog'])
    assert other.resume_fingerprint() != base


# -------------------------------------------------- generate_pseudo_labels
def test_pseudo_label_on_error_raise_also_raises_on_missing_images(tmp_path):
    spec = importlib.util.spec_from_file_location(
        'tools_generate_pseudo_labels', osp.join(REPO, 'tools', 'generate_pseudo_labels.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    config = osp.join(REPO, 'configs', 'pseudo_labelers', 'clip-es_vit-b16_voc12-val_tagclip-tags.py')
    for on_error in ('raise', 'skip'):
        args = Namespace(config=config, out=str(tmp_path / 'out'), on_error=on_error,
                         overwrite=False, save_cams=False, tags=None, clip_checkpoint=None,
                         launcher='none', work_dir=None)
        cfg = tool.configure(Config.fromfile(config), args)
        assert cfg.test_dataloader.dataset.on_missing == on_error
        loader = cfg.test_dataloader.dataset.pipeline[0].transforms[0]
        assert loader.type == 'LoadImageRobust' and loader.on_error == on_error


# ---------------------------------------------------------------- end to end
NUM_IMAGES = 16
TAG_CONFIG = 'configs/tagclip/tagclip_vit-b16_voc07-test.py'
TAG_FILES = ('tags.txt', 'scores.jsonl', 'tags.skipped.txt')


@pytest.fixture(scope='module')
def voc07(tmp_path_factory):
    """A VOC2007-layout classification set of small noise images with labels."""
    root = tmp_path_factory.mktemp('voc07')
    (root / 'JPEGImages').mkdir()
    rng = np.random.default_rng(1)
    lines = []
    for i in range(NUM_IMAGES):
        h, w = rng.integers(24, 80, size=2)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / 'JPEGImages' / f'img{i:03d}.jpg', quality=90)
        labels = sorted(set(rng.integers(0, 20, size=rng.integers(1, 4)).tolist()))
        lines.append(' '.join([f'img{i:03d}', *map(str, labels)]))
    (root / 'test_cls.txt').write_text('\n'.join(lines) + '\n')
    return root


def _tag_args(voc07, out, work_dir, tiny_tool_options, *extra):
    return [TAG_CONFIG, '--work-dir', str(work_dir), '--cfg-options', *tiny_tool_options['tag'],
            f'test_dataloader.dataset.data_root={voc07}',
            f'test_evaluator.1.out_file={out / "tags.txt"}',
            f'test_evaluator.1.scores_file={out / "scores.jsonl"}', *extra]


def _metrics(work_dir) -> dict:
    """The metrics of a test run: exact floats from the json dump, counts from the log.

    (mmengine dumps integer metrics as null and logs floats with 4 decimals.)
    """
    [log] = glob.glob(str(work_dir / '*' / '*.log'))
    [dump] = glob.glob(str(work_dir / '*' / '*.json'))
    metrics = dict(re.findall(r'((?:tagging|tags)/\w+): (\d+)\s', open(log).read()))
    metrics.update((k, v) for k, v in json.loads(open(dump).read().splitlines()[-1]).items()
                   if k.startswith(('tagging/', 'tags/')) and v is not None)
    return metrics


@pytest.mark.determinism
@pytest.mark.slow
def test_killed_tagging_run_resumes_to_the_same_files_and_metrics(voc07, tmp_path,
                                                                  tiny_tool_options, tool_runner,
                                                                  tag_files_agree):
    ref = tmp_path / 'ref'
    tool_runner.inprocess('tools/test.py',
                          *_tag_args(voc07, ref, tmp_path / 'wd_ref', tiny_tool_options))
    reference = {name: (ref / name).read_bytes() for name in TAG_FILES}
    ref_metrics = _metrics(tmp_path / 'wd_ref')
    assert ref_metrics['tags/num_images'] == str(NUM_IMAGES) and 'tagging/mAP' in ref_metrics

    out = tmp_path / 'out'
    out.mkdir()
    for name in TAG_FILES:  # complete files of an earlier run
        (out / name).write_bytes(b'old complete file\n')
    seed = tool_runner.kill_seed()
    kill_after = random.Random(seed).randint(2, NUM_IMAGES - 6)
    context = f'seed={seed}, kill after {kill_after} journaled images'
    journal = journal_path(str(out / 'tags.txt'), 0)
    proc = tool_runner.popen(
        'tools/test.py', *_tag_args(voc07, out, tmp_path / 'wd_killed', tiny_tool_options,
                                    'test_dataloader.batch_size=1'),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def enough_journaled() -> bool:
        for name in TAG_FILES:
            assert (out / name).read_bytes() == b'old complete file\n', (context, name)
        return osp.isfile(journal) and open(journal, 'rb').read().count(b'\n') > kill_after

    tool_runner.kill_when(proc, enough_journaled)
    assert proc.returncode == -signal.SIGKILL, f'{context}: ended by itself (rc={proc.returncode})'
    for name in TAG_FILES:
        assert (out / name).read_bytes() == b'old complete file\n', (context, name)
    journaled = [json.loads(line)['img_id'] for line in _lines(journal)[1:]
                 if line.endswith(b'}')]
    assert kill_after <= len(journaled) < NUM_IMAGES, context

    # The restart, with dataloader workers (they inherit the journal records).
    tool_runner.inprocess('tools/test.py',
                          *_tag_args(voc07, out, tmp_path / 'wd_resumed', tiny_tool_options,
                                     'test_dataloader.num_workers=2'))
    resumed = {name: (out / name).read_bytes() for name in TAG_FILES}
    tag_files_agree(resumed, reference, Config.fromfile(TAG_CONFIG).model.tag_ratio)
    metrics = _metrics(tmp_path / 'wd_resumed')
    assert metrics.pop('tags/num_resumed') == str(len(journaled)), context
    assert ref_metrics.pop('tags/num_resumed') == '0'
    if resumed == reference:
        assert metrics == ref_metrics, context  # mAP, F1s (exact), counts
    else:  # rounding may reorder images with scores within the contract's tolerance
        assert metrics.keys() == ref_metrics.keys(), context
        for key, value in ref_metrics.items():
            assert abs(float(metrics[key]) - float(value)) < 0.02, (context, key)
    assert journal_paths(str(out / 'tags.txt')) == []
    assert not [n for n in os.listdir(out) if n.endswith('.tmp')]

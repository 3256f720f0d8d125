"""Resuming killed runs (tagclip_mmseg.resume): journal, skip transforms, loop, tools.

A tagging run journals each image as soon as it is tagged; a pseudo-label run
writes each mask atomically as it goes. A run killed with SIGKILL and started
again reuses the finished images (exact scores, masks read back) and ends with
files byte-identical to an uninterrupted run's (up to the determinism
contract), and the same metrics. A killed tagging run leaves the previous
complete files (or none) untouched. ``ResumableTestLoop`` keeps restored and
unreadable images away from the model and hands every output, in input order,
to the evaluator. Outputs must not depend on the run or on the number of
processes.

The random kill point is printed on failure (``seed=...``) so that a failing
case can be replayed with ``RELIABILITY_KILL_SEED``.
"""
import ast
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
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.model import BaseModel
from mmengine.structures import PixelData
from mmpretrain.structures import DataSample
from mmseg.structures import SegDataSample
from PIL import Image

from tagclip_mmseg.evaluation import TagFileWriter
from tagclip_mmseg.models.taggers import TagCLIP
from tagclip_mmseg.records import (TagJournal, decode_scores, encode_scores, journal_path,
                                   journal_paths, read_journals)
from tagclip_mmseg.resume import (ResumableTestLoop, SkipTagged, TagResumeHook, predict_or_restore,
                                  require_resumable_loop, resume_fingerprint)
from tagclip_mmseg.testing.checkout import repo_root
from tagclip_mmseg.testing.models import build_tagger

REPO = repo_root(__file__)
NUM_CLASSES = 5


# ------------------------------------------------------------------ journal
def _record(img_id, seed=0):
    """A journal record with float32 scores that need every bit to round-trip."""
    scores = torch.rand(NUM_CLASSES, generator=torch.Generator().manual_seed(seed)) / 3
    return dict(img_id=img_id, img_path=f'/d/{img_id}.jpg', ori_shape=[4, 6], tags=[1, 3],
                scores=encode_scores(scores))


def _lines(path):
    return open(path, 'rb').read().split(b'\n')


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
    from tagclip_mmseg.records import journal as tag_journal
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
    the restored one, as ``ResumableTestLoop`` sets it (``restore_prediction``).
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


@pytest.mark.classic
def test_resumed_run_writes_the_same_bytes_and_metrics(tmp_path, tagging_metrics_oracle):
    ids = [f'img{i}' for i in range(8)]
    reference, ref_metrics = _evaluate(tmp_path / 'ref',
                                       [_sample(i, s) for s, i in enumerate(ids)])
    # the metrics themselves: docs/method.md, "Classification evaluation", computed
    # independently from the samples
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

    TagResumeHook._check_packed([PackInputs(meta_keys=('img_id', 'precomputed', 'pred_record'))])
    with pytest.raises(ValueError, match='pred_record'):
        TagResumeHook._check_packed([PackInputs(meta_keys=('img_id', 'precomputed'))])


# -------------------------------------------------------------------- model
#: ``_tagger(clip_module, **settings)``.
_tagger = partial(build_tagger, class_names=[f'c{i}' for i in range(NUM_CLASSES)],
                  background_words=['sky'], templates=['a photo of a {}.'], avg_layers=(0, 1),
                  vote_k=2)


def _batch(samples, side=16):
    """A collated batch (``pseudo_collate``) of black images for ``samples``."""
    return dict(inputs=[torch.zeros(3, side, side, dtype=torch.uint8) for _ in samples],
                data_samples=list(samples))


def test_restore_puts_back_the_journaled_prediction(tiny_clip):
    tagger = _tagger(tiny_clip)
    record = _record('img0')
    prediction = dict(pred_score=decode_scores(record['scores']),
                      pred_label=torch.tensor(record['tags']))
    sample = DataSample(metainfo=dict(img_id='img0', precomputed=True, pred_record=prediction))
    [out] = predict_or_restore(tagger, _batch([sample]))
    assert torch.equal(out.pred_score, prediction['pred_score'])
    assert out.pred_label.tolist() == [1, 3]
    bad = dict(prediction, pred_score=torch.zeros(NUM_CLASSES + 1))
    with pytest.raises(ValueError, match='journal'):
        predict_or_restore(tagger,
                           _batch([DataSample(metainfo=dict(precomputed=True, pred_record=bad))]))


def test_resume_fingerprint_follows_what_decides_the_scores(tiny_clip):
    base = resume_fingerprint(_tagger(tiny_clip))
    assert resume_fingerprint(_tagger(tiny_clip, cwr_batch_size=3)) == base
    assert resume_fingerprint(_tagger(tiny_clip, tag_ratio=0.4)) != base
    assert resume_fingerprint(_tagger(tiny_clip, quirks='fixed')) != base
    other = _tagger(tiny_clip)
    other.set_vocabulary(['c0', 'c1', 'c2', 'c3', 'dog'])
    assert resume_fingerprint(other) != base


# ------------------------------------------------------- ResumableTestLoop
class _SpyModel(BaseModel):
    """Records the ids of the samples ``predict`` gets; predicts from the pixels.

    A tagging sample's scores are the mean of its image, so an output shows
    which image it was computed from; a mask is all zeros.
    """

    num_classes = NUM_CLASSES
    fill_sample = staticmethod(TagCLIP.fill_sample)  # what restored tagging samples get

    def __init__(self) -> None:
        super().__init__()
        self.seen = []
        self.calls = 0

    def forward(self, inputs, data_samples=None, mode='predict'):
        assert mode == 'predict'
        return self.predict(inputs, data_samples)

    def predict(self, inputs, data_samples):
        self.calls += 1
        for img, sample in zip(inputs, data_samples):
            assert not sample.metainfo.get('precomputed') and not sample.metainfo.get('load_error')
            self.seen.append(sample.metainfo['img_id'])
            if isinstance(sample, SegDataSample):
                sample.set_data(dict(pred_sem_seg=PixelData(
                    data=torch.zeros(1, *sample.metainfo['ori_shape'], dtype=torch.long))))
            else:
                sample.set_pred_score(torch.full((NUM_CLASSES, ), float(img.float().mean())))
                sample.set_pred_label(torch.tensor([0]))
        return data_samples


def _loop(model):
    """A ResumableTestLoop on a stand-in runner that records hooks and evaluations."""
    loop = ResumableTestLoop.__new__(ResumableTestLoop)
    calls = []
    loop._runner = SimpleNamespace(model=model,
                                   call_hook=lambda name, **kwargs: calls.append((name, kwargs)))
    loop.evaluator = SimpleNamespace(
        process=lambda data_samples, data_batch: calls.append(('process', data_samples)))
    loop.fp16 = False
    return loop, calls


def _tag_sample(img_id, status):
    meta = dict(img_id=img_id, img_path=f'/d/{img_id}.jpg', ori_shape=(4, 6))
    if status in ('restore', 'both'):
        record = _record(img_id)
        meta.update(precomputed=True, pred_record=dict(
            pred_score=decode_scores(record['scores']), pred_label=torch.tensor(record['tags'])))
    if status in ('failed', 'both'):
        meta['load_error'] = 'truncated file'
    return DataSample(metainfo=meta)


def test_loop_hands_the_model_only_samples_to_compute_in_input_order():
    statuses = ['compute', 'restore', 'failed', 'compute', 'both', 'restore', 'compute']
    samples = [_tag_sample(f'img{i}', s) for i, s in enumerate(statuses)]
    batch = dict(inputs=[torch.full((3, 16, 16), 10 * i, dtype=torch.uint8)
                         for i in range(len(samples))], data_samples=samples)
    model = _SpyModel()
    loop, calls = _loop(model)
    loop.run_iter(0, batch)
    assert model.seen == ['img0', 'img3', 'img6'] and model.calls == 1
    assert [name for name, _ in calls] == ['before_test_iter', 'process', 'after_test_iter']
    outputs = calls[1][1]
    assert calls[2][1]['outputs'] is outputs and calls[2][1]['data_batch'] is batch
    assert [o.metainfo['img_id'] for o in outputs] == [f'img{i}' for i in range(len(samples))]
    for i, (out, status) in enumerate(zip(outputs, statuses)):
        if status == 'compute':  # computed from its own image
            assert out.pred_score.tolist() == [10. * i] * NUM_CLASSES, i
        elif status == 'restore':
            assert torch.equal(out.pred_score, decode_scores(_record(f'img{i}')['scores']))
            assert out.pred_label.tolist() == [1, 3]
        else:  # a failed load wins over precomputed
            assert out.pred_score.tolist() == [0.] * NUM_CLASSES and out.pred_label.numel() == 0


def test_loop_does_not_call_the_model_without_samples_to_compute():
    samples = [_tag_sample('a', 'restore'), _tag_sample('b', 'failed')]
    model = _SpyModel()
    loop, calls = _loop(model)
    loop.run_iter(0, _batch(samples))
    assert model.calls == 0
    assert [o.metainfo['img_id'] for o in calls[1][1]] == ['a', 'b']


def test_loop_restores_and_empties_masks():
    mask = np.arange(12, dtype=np.uint8).reshape(3, 4)
    samples = [SegDataSample(metainfo=dict(img_id='done', ori_shape=(3, 4), precomputed=True,
                                           pred_seg_map=mask)),
               SegDataSample(metainfo=dict(img_id='bad', ori_shape=(2, 5), load_error='x')),
               SegDataSample(metainfo=dict(img_id='new', ori_shape=(2, 2)))]
    model = _SpyModel()
    outputs = predict_or_restore(model, _batch(samples))
    assert model.seen == ['new']
    assert outputs[0].pred_sem_seg.data.tolist() == [mask.tolist()]
    assert outputs[1].pred_sem_seg.data.shape == (1, 2, 5)
    assert (outputs[1].pred_sem_seg.data == 255).all()
    assert outputs[2].pred_sem_seg.data.shape == (1, 2, 2)


def test_loop_with_tagclip_computes_what_the_model_alone_computes(tiny_clip):
    tagger = _tagger(tiny_clip)
    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 32, 48), generator=gen, dtype=torch.uint8),
              torch.randint(0, 256, (3, 16, 32), generator=gen, dtype=torch.uint8)]
    alone = tagger.test_step(dict(inputs=list(images),
                                  data_samples=[DataSample(), DataSample()]))
    samples = [DataSample(), _tag_sample('done', 'restore'), DataSample()]
    batch = dict(inputs=[images[0], torch.zeros(3, 16, 16, dtype=torch.uint8), images[1]],
                 data_samples=samples)
    outputs = predict_or_restore(tagger, batch)
    for out, ref in zip(outputs[::2], alone):
        assert torch.equal(out.pred_score, ref.pred_score)
        assert torch.equal(out.pred_label, ref.pred_label)
    assert outputs[1].pred_label.tolist() == [1, 3]


def test_skip_transforms_need_the_resumable_loop():
    plain = SimpleNamespace(test_loop=object())
    with pytest.raises(ValueError, match='ResumableTestLoop'):
        require_resumable_loop(plain, 'SkipTagged')
    require_resumable_loop(SimpleNamespace(test_loop=ResumableTestLoop.__new__(ResumableTestLoop)),
                           'SkipTagged')
    cfg = Config.fromfile(osp.join(REPO, 'configs', '_base_',
                                   'default_runtime_training_free.py'))
    assert cfg.test_cfg.type == 'ResumableTestLoop'


def _absolute_imports(path: str, module: str):
    """Every module ``path`` (the module ``module``) imports, as an absolute name."""
    package = module.rsplit('.', 1)[0] if not path.endswith('__init__.py') else module
    for node in ast.walk(ast.parse(open(path, encoding='utf-8').read(), path)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')
                parent = '.'.join(parts[:len(parts) - node.level + 1])
                base = f'{parent}.{base}' if base else parent
            yield base
            yield from (f'{base}.{alias.name}' for alias in node.names)


def test_models_import_nothing_of_the_file_handling():
    """Models compute; writers, hooks, the inferencer and resuming live outside."""
    root = osp.join(REPO, 'tagclip_mmseg', 'models')
    forbidden = tuple(f'tagclip_mmseg.{p}' for p in ('evaluation', 'engine', 'apis', 'resume'))
    paths = glob.glob(osp.join(root, '**', '*.py'), recursive=True)
    imports = {}
    for path in paths:
        rel = osp.relpath(path, REPO)[:-3].replace(os.sep, '.')
        module = rel[:-len('.__init__')] if rel.endswith('.__init__') else rel
        imports[module] = set(_absolute_imports(path, module))
    # The relative imports resolve (else the check below would pass vacuously).
    frozen_model = imports['tagclip_mmseg.models.clip.frozen_model']
    assert 'tagclip_mmseg.models.clip.checkpoint' in frozen_model
    assert 'tagclip_mmseg.utils.io' in imports['tagclip_mmseg.models.clip.checkpoint']
    leaks = sorted(f'{module}: {name}' for module, names in imports.items() for name in names
                   if any(name == p or name.startswith(p + '.') for p in forbidden))
    assert leaks == []


# -------------------------------------------------- generate_pseudo_labels
def test_pseudo_label_on_error_raise_also_raises_on_missing_images(tmp_path):
    spec = importlib.util.spec_from_file_location(
        'tools_generate_pseudo_labels', osp.join(REPO, 'tools', 'generate_pseudo_labels.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    config = osp.join(REPO, 'configs', 'pseudo_labelers',
                      'clip-es_vit-b16_voc12-val_tagclip-tags.py')
    for on_error in ('raise', 'skip'):
        args = Namespace(config=config, out=str(tmp_path / 'out'), on_error=on_error,
                         overwrite=False, save_cams=False, tags=None, clip_checkpoint=None,
                         launcher='none', work_dir=None)
        cfg = tool.configure(Config.fromfile(config), args)
        assert cfg.test_dataloader.dataset.on_missing == on_error
        loader = cfg.test_dataloader.dataset.pipeline[0].transforms[0]
        assert loader.type == 'LoadImageRobust' and loader.on_error == on_error


# =========================================== end to end: the command-line tools
NUM_IMAGES = 30
PL_SCRIPT = 'tools/generate_pseudo_labels.py'
TAG_CONFIG = 'configs/tagclip/tagclip_vit-b16_folder.py'
TAG_FILES = ('tags.txt', 'scores.jsonl', 'tags.skipped.txt')
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
PNG_TRAILER = b'\x00\x00\x00\x00IEND\xaeB`\x82'


@pytest.fixture(scope='module')
def images(tmp_path_factory, random_split):
    """``NUM_IMAGES`` small photos of mixed sizes, a split list and a tags file."""
    return random_split(tmp_path_factory.mktemp('resume'),
                        [f'img{i:03d}' for i in range(NUM_IMAGES)], seed=0, max_side=96,
                        min_tags=0)


def pl_args(images, out, tiny_tool_options, config, *extra):
    return [
        config, '--out', str(out), '--tags', str(images / 'tags.txt'), '--cfg-options',
        *tiny_tool_options['pl'], f'test_dataloader.dataset.data_root={images}',
        'test_dataloader.dataset.ann_file=list.txt', *extra
    ]


def visible_files(folder) -> dict:
    """Every non-hidden file of ``folder`` (not recursive) -> its bytes."""
    return {
        name: (folder / name).read_bytes()
        for name in sorted(os.listdir(folder))
        if not name.startswith('.') and (folder / name).is_file()
    }


def assert_pngs_complete(folder) -> int:
    """Every visible ``*.png`` is a whole PNG that decodes; returns how many there are.

    A PNG is replaced atomically, never rewritten in place, so reading one
    that is listed always yields a complete file, whatever the writer is
    doing at that moment.
    """
    names = [n for n in os.listdir(folder) if n.endswith('.png') and not n.startswith('.')]
    for name in names:
        data = (folder / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and data.endswith(PNG_TRAILER), name
        with Image.open(folder / name) as img:
            img.load()
    return len(names)


def pngs(folder) -> dict:
    return {k: v for k, v in visible_files(folder).items() if k.endswith('.png')}


# ------------------------------------------------------------ pseudo labels
@pytest.fixture(scope='module')
def reference(images, tmp_path_factory, tiny_tool_options, tool_runner, pl_list_config):
    """An uninterrupted pseudo-label run of the images (in this process).

    It runs with ``--no-resume`` over a folder of outdated (but complete)
    masks, which must all be recomputed and replaced.
    """
    out = tmp_path_factory.mktemp('reference')
    outdated = Image.new('P', (3, 2))
    for i in range(NUM_IMAGES):
        outdated.save(out / f'img{i:03d}.png')
    tool_runner.inprocess(PL_SCRIPT, '--no-resume',
                          *pl_args(images, out, tiny_tool_options, pl_list_config))
    summary = json.loads((out / 'summary.json').read_text())
    assert (summary['written'], summary['skipped'], summary['failed']) == (NUM_IMAGES, 0, 0)
    for name in pngs(out):
        with Image.open(out / name) as mask:
            assert mask.size != (3, 2), name
    return out


@pytest.mark.classic
@pytest.mark.determinism
def test_killed_pseudo_label_run_resumes_to_the_same_folder(images, reference, tmp_path,
                                                            tiny_tool_options, tool_runner,
                                                            pl_list_config, masks_agree):
    seed = tool_runner.kill_seed()
    kill_after = random.Random(seed).randint(2, NUM_IMAGES - 8)
    context = f'seed={seed}, kill after {kill_after} PNGs'
    out = tmp_path / 'out'
    log = (tmp_path / 'killed.log').open('w')
    # One image per batch: PNGs appear one by one, so the kill lands mid-run.
    # (The reference ran with the config's batches of 4: a mask must not
    # depend on which images share its batch.)
    proc = tool_runner.popen(
        PL_SCRIPT, *pl_args(images, out, tiny_tool_options, pl_list_config,
                            'test_dataloader.batch_size=1'),
        stdout=log, stderr=subprocess.STDOUT)
    polls = 0

    def enough_pngs() -> bool:
        nonlocal polls
        if not out.is_dir():
            return False
        polls += 1
        return assert_pngs_complete(out) >= kill_after

    try:
        tool_runner.kill_when(proc, enough_pngs)
    finally:
        log.close()
    assert proc.returncode == -signal.SIGKILL, (
        f'{context}: the run ended by itself (rc={proc.returncode}) before the kill; '
        + (tmp_path / 'killed.log').read_text()[-2000:])
    done = assert_pngs_complete(out)
    assert kill_after <= done < NUM_IMAGES, context
    assert not (out / 'summary.json').exists(), context
    finished = pngs(out)
    masks_agree(finished, {name: (reference / name).read_bytes() for name in finished})

    # The restart (here, in this process) comes after the temporaries of the
    # killed run are "stale": with the default 60 s, a restart within a minute
    # leaves them for the next one.
    tool_runner.inprocess(
        PL_SCRIPT, *pl_args(images, out, tiny_tool_options, pl_list_config,
                            'test_evaluator.0.stale_temp_age_s=0'))
    summary = json.loads((out / 'summary.json').read_text())
    assert (summary['skipped'], summary['written'], summary['failed']) == (
        done, NUM_IMAGES - done, 0), context
    # The same folder (summary.json holds timings and counts): the same files,
    # the kept masks byte for byte, and the masks under the determinism
    # contract (the reference ran batches of 4 in the test's threads).
    expected = {k: v for k, v in visible_files(reference).items() if k != 'summary.json'}
    actual = {k: v for k, v in visible_files(out).items() if k != 'summary.json'}
    assert sorted(actual) == sorted(expected), context
    assert all(actual[name] == data for name, data in finished.items()), context
    masks_agree({k: v for k, v in actual.items() if k.endswith('.png')},
                {k: v for k, v in expected.items() if k.endswith('.png')})
    assert {k: v for k, v in actual.items() if not k.endswith('.png')} == {
        k: v for k, v in expected.items() if not k.endswith('.png')}, context
    assert not [n for n in os.listdir(out) if n.endswith('.tmp')], context
    assert polls > 1


def test_pseudo_label_rerun_after_completion_recomputes_nothing(images, reference, tmp_path,
                                                                tiny_tool_options, tool_runner,
                                                                pl_list_config):
    out = tmp_path / 'out'
    out.mkdir()
    # The masks, the record of their settings (settings.json) and of the
    # image versions they were made from (.sources.rank*.jsonl).
    for name, data in visible_files(reference).items():
        (out / name).write_bytes(data)
    for path in reference.glob('.sources.rank*.jsonl'):
        (out / path.name).write_bytes(path.read_bytes())
    tool_runner.inprocess(PL_SCRIPT, *pl_args(images, out, tiny_tool_options, pl_list_config))
    summary = json.loads((out / 'summary.json').read_text())
    assert (summary['skipped'], summary['written']) == (NUM_IMAGES, 0)
    assert pngs(out) == pngs(reference)


# ------------------------------------------ tagging, a folder of photos
def tag_args(images, out, tiny_tool_options, *extra):
    return [
        TAG_CONFIG, '--work-dir', str(out / 'work_dir'), '--cfg-options', *tiny_tool_options['tag'],
        f'test_dataloader.dataset.data_root={images / "JPEGImages"}',
        f'test_evaluator.0.out_file={out / "tags.txt"}',
        f'test_evaluator.0.scores_file={out / "scores.jsonl"}', *extra
    ]




@pytest.fixture(scope='module')
def tag_reference(images, tmp_path_factory, tiny_tool_options, tool_runner):
    out = tmp_path_factory.mktemp('tag_reference')
    tool_runner.inprocess('tools/test.py', *tag_args(images, out, tiny_tool_options))
    return {name: (out / name).read_bytes() for name in TAG_FILES}


@pytest.fixture(scope='module')
def tag_ratio():
    """The tag threshold ratio of the tagging config the runs use."""
    return Config.fromfile(TAG_CONFIG).model.tag_ratio


def journaled_ids(out) -> list:
    """Image ids in the tagging journals of ``out/tags.txt`` (complete lines only)."""
    ids = []
    for path in glob.glob(str(out / 'tags.txt.journal.rank*.jsonl')):
        lines = open(path, 'rb').read().split(b'\n')[1:]  # after the header
        ids += [json.loads(line)['img_id'] for line in lines if line.endswith(b'}')]
    return ids


@pytest.mark.classic
@pytest.mark.determinism
@pytest.mark.slow
def test_killed_tagging_run_resumes_to_the_same_files(images, tag_reference, tmp_path,
                                                      tiny_tool_options, tool_runner,
                                                      tag_files_agree, tag_ratio):
    """A kill leaves the last complete files; the restart resumes from the journal.

    The folder holds the files of an earlier run of another vocabulary; the
    new run is killed after a random number of journaled images and must
    leave them untouched (not truncated, not half-replaced); the restart
    reuses exactly the journaled images and writes the reference files (up to
    the rounding the determinism contract allows: the killed run has batches
    of 1 in one thread, the reference batches of 8 in the test's threads).
    """
    for name in TAG_FILES:
        (tmp_path / name).write_bytes(b'old complete file\n')
    seed = tool_runner.kill_seed()
    kill_after = random.Random(seed).randint(1, NUM_IMAGES - 8)
    context = f'seed={seed}, kill after {kill_after} journaled images'
    proc = tool_runner.popen(
        'tools/test.py', *tag_args(images, tmp_path, tiny_tool_options,
                                   'test_dataloader.batch_size=1'),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def enough_journaled() -> bool:
        if len(journaled_ids(tmp_path)) >= kill_after:
            return True
        for name in TAG_FILES:
            assert (tmp_path / name).read_bytes() == b'old complete file\n', context
        return False

    tool_runner.kill_when(proc, enough_journaled)
    assert proc.returncode == -signal.SIGKILL, f'{context}: rc={proc.returncode}'
    for name in TAG_FILES:
        assert (tmp_path / name).read_bytes() == b'old complete file\n', context
    done = journaled_ids(tmp_path)
    assert kill_after <= len(done) < NUM_IMAGES, context
    tool_runner.inprocess('tools/test.py', *tag_args(images, tmp_path, tiny_tool_options))
    tag_files_agree({name: (tmp_path / name).read_bytes() for name in TAG_FILES}, tag_reference,
                    tag_ratio)
    logs = ''.join(open(p).read() for p in glob.glob(str(tmp_path / 'work_dir' / '*' / '*.log')))
    assert f'{NUM_IMAGES - len(done)} tagged, {len(done)} resumed, 0 skipped' in logs, context
    assert not glob.glob(str(tmp_path / '*.journal.*'))
    assert not [n for n in os.listdir(tmp_path) if n.endswith('.tmp')]


@pytest.mark.determinism
@pytest.mark.slow
def test_tags_of_two_processes_equal_one(images, tag_reference, tmp_path, tiny_tool_options,
                                         tool_runner, tag_files_agree, tag_ratio):
    """The tags files of a 2-process run equal one process's.

    The run uses torchrun with gloo on CPU; equality is under the determinism contract.
    """
    tool_runner.subprocess('tools/test.py', *tag_args(images, tmp_path, tiny_tool_options),
                           nproc=2)
    tag_files_agree({name: (tmp_path / name).read_bytes() for name in TAG_FILES}, tag_reference,
                    tag_ratio)
    assert not glob.glob(str(tmp_path / '*.journal.*'))  # both ranks' journals removed


# ------------------------------------------- tagging, VOC07 with metrics
VOC07_IMAGES = 16
VOC07_TAG_CONFIG = 'configs/tagclip/tagclip_vit-b16_voc07-test.py'


@pytest.fixture(scope='module')
def voc07(tmp_path_factory):
    """A VOC2007-layout classification set of small noise images with labels."""
    root = tmp_path_factory.mktemp('voc07')
    (root / 'JPEGImages').mkdir()
    rng = np.random.default_rng(1)
    lines = []
    for i in range(VOC07_IMAGES):
        h, w = rng.integers(24, 80, size=2)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / 'JPEGImages' / f'img{i:03d}.jpg', quality=90)
        labels = sorted(set(rng.integers(0, 20, size=rng.integers(1, 4)).tolist()))
        lines.append(' '.join([f'img{i:03d}', *map(str, labels)]))
    (root / 'test_cls.txt').write_text('\n'.join(lines) + '\n')
    return root


def _tag_args(voc07, out, work_dir, tiny_tool_options, *extra):
    return [VOC07_TAG_CONFIG, '--work-dir', str(work_dir), '--cfg-options',
            *tiny_tool_options['tag'],
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
    assert ref_metrics['tags/num_images'] == str(VOC07_IMAGES) and 'tagging/mAP' in ref_metrics

    out = tmp_path / 'out'
    out.mkdir()
    for name in TAG_FILES:  # complete files of an earlier run
        (out / name).write_bytes(b'old complete file\n')
    seed = tool_runner.kill_seed()
    kill_after = random.Random(seed).randint(2, VOC07_IMAGES - 6)
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
    assert kill_after <= len(journaled) < VOC07_IMAGES, context

    # The restart, with dataloader workers (they inherit the journal records).
    tool_runner.inprocess('tools/test.py',
                          *_tag_args(voc07, out, tmp_path / 'wd_resumed', tiny_tool_options,
                                     'test_dataloader.num_workers=2'))
    resumed = {name: (out / name).read_bytes() for name in TAG_FILES}
    tag_files_agree(resumed, reference, Config.fromfile(VOC07_TAG_CONFIG).model.tag_ratio)
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

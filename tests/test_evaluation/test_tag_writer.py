"""TagFileWriter: file formats, ordering, skipped images, determinism; the writers' run lock."""
import json

import pytest
import torch

from tagclip_mmseg.datasets.label_files import read_label_file
from tagclip_mmseg.evaluation import TagFileWriter


def _sample(img_id, tags, scores, load_error=None):
    from mmpretrain.structures import DataSample
    meta = dict(img_id=img_id, img_path=f'/d/{img_id}.jpg', ori_shape=(4, 4))
    if load_error is not None:
        meta['load_error'] = load_error
    sample = DataSample(metainfo=meta)
    sample.set_pred_score(torch.tensor(scores, dtype=torch.float))
    sample.set_pred_label(torch.tensor(tags, dtype=torch.long))
    return sample.to_dict()


SAMPLES = [
    ('2007_000042', [18, 3], [0.1, 0.2, 0.3]),
    ('2007_000033', [0], [0.9, 1 / 3, 0.05]),
    ('2007_000061', [], [0.2, 0.2, 0.2]),
]


def _write(tmp_path, name, samples, **kwargs):
    writer = TagFileWriter(out_file=str(tmp_path / f'{name}.txt'),
                           scores_file=str(tmp_path / f'{name}.jsonl'), **kwargs)
    writer.process({}, samples)
    return writer.compute_metrics(writer.results)


def test_tags_and_scores_files(tmp_path):
    samples = [_sample(*s) for s in SAMPLES]
    samples.append(_sample('2008_000001', [1], [0, 0, 0], load_error='truncated file'))
    out = _write(tmp_path, 'tags', samples)
    assert out == dict(num_images=3, num_resumed=0, num_skipped=1)
    assert (tmp_path / 'tags.txt').read_text() == \
        '2007_000033 0\n2007_000042 3 18\n2007_000061\n'
    lines = [json.loads(line) for line in (tmp_path / 'tags.jsonl').read_text().splitlines()]
    assert [r['img_id'] for r in lines] == ['2007_000033', '2007_000042', '2007_000061']
    assert lines[0]['scores'] == [pytest.approx(0.9), 0.333333, 0.05]
    assert lines[1]['tags'] == [3, 18]
    assert (tmp_path / 'tags.skipped.txt').read_text() == \
        '2008_000001\t/d/2008_000001.jpg\ttruncated file\n'


def test_output_is_deterministic_under_reordering(tmp_path):
    samples = [_sample(*s) for s in SAMPLES]
    _write(tmp_path, 'a', samples)
    _write(tmp_path, 'b', samples[::-1])
    assert (tmp_path / 'a.txt').read_bytes() == (tmp_path / 'b.txt').read_bytes()
    assert (tmp_path / 'a.jsonl').read_bytes() == (tmp_path / 'b.jsonl').read_bytes()


def test_ranks_gathered_like_mmengine(tmp_path):
    """Two 'ranks' each process their share; rank 0 writes all of it."""
    rank0 = TagFileWriter(out_file=str(tmp_path / 't.txt'))
    rank1 = TagFileWriter(out_file=str(tmp_path / 't.txt'))
    rank0.process({}, [_sample(*SAMPLES[0])])
    rank1.process({}, [_sample(*SAMPLES[1]), _sample(*SAMPLES[2])])
    out = rank0.compute_metrics(rank0.results + rank1.results)
    assert out['num_images'] == 3
    assert (tmp_path / 't.txt').read_text().count('\n') == 3


def test_unwritable_output(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    with pytest.raises(PermissionError):
        TagFileWriter(out_file=str(blocker / 'tags.txt')).begin_run()


def test_missing_tags_is_an_error(tmp_path):
    sample = _sample(*SAMPLES[0])
    del sample['pred_label']
    writer = TagFileWriter(out_file=str(tmp_path / 't.txt'))
    with pytest.raises(KeyError, match='pred_label'):
        writer.process({}, [sample])


def test_through_config_and_evaluator(tmp_path):
    from mmengine.evaluator import Evaluator
    from mmseg.registry import METRICS
    writer = METRICS.build(dict(type='TagFileWriter', out_file=str(tmp_path / 'tags.txt')))
    evaluator = Evaluator([writer, METRICS.build(dict(type='TaggingMetric'))])
    from mmpretrain.structures import DataSample
    samples = []
    for img_id, tags, scores in SAMPLES:
        s = DataSample(metainfo=dict(img_id=img_id)).set_pred_score(torch.tensor(scores))
        samples.append(s.set_pred_label(torch.tensor(tags)).set_gt_label(torch.tensor([0])))
    evaluator.process(samples)
    out = evaluator.evaluate(len(samples))
    assert out['tags/num_images'] == 3 and 'tagging/mAP' in out
    assert (tmp_path / 'tags.txt').read_text().startswith('2007_000033 0\n')


#: Ids that a space-separated line cannot hold as they are.
ODD_IDS = ('IMG 0001', 'tab\there', 'кот и пёс', 'nbsp\u00a0ideographic\u3000space', '50% off,2')


def _tag_sample(img_id, tags, scores):
    from mmpretrain.structures import DataSample
    sample = DataSample(metainfo=dict(img_id=img_id, img_path=f'/d/{img_id}.jpg',
                                      ori_shape=(4, 4)))
    sample.set_pred_score(torch.tensor(scores, dtype=torch.float))
    sample.set_pred_label(torch.tensor(tags, dtype=torch.long))
    return sample.to_dict()


def test_tags_file_round_trips_ids_with_spaces_tabs_and_unicode(tmp_path):
    from tagclip_mmseg.evaluation import TagFileWriter
    expected = {img_id: [i % 3, 3 + i] for i, img_id in enumerate(ODD_IDS)}
    expected['plain_id'] = []
    writer = TagFileWriter(out_file=str(tmp_path / 'tags.txt'))
    writer.process({}, [_tag_sample(i, t, [0.1] * 8) for i, t in expected.items()])
    writer.compute_metrics(writer.results)
    assert read_label_file(tmp_path / 'tags.txt', num_classes=8) == {
        k: sorted(v) for k, v in sorted(expected.items())}
    text = (tmp_path / 'tags.txt').read_text(encoding='utf-8')
    assert 'IMG%200001 0 3\n' in text and 'plain_id\n' in text and 'кот%20и%20пёс' in text


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_tag_writer_refuses_non_finite_scores(tmp_path, bad):
    from tagclip_mmseg.evaluation import TagFileWriter
    writer = TagFileWriter(out_file=str(tmp_path / 'tags.txt'),
                           scores_file=str(tmp_path / 'scores.jsonl'))
    with pytest.raises(ValueError,
                       match=r'image b .*scores hold non-finite values .* first at index \[1\]'):
        writer.process({}, [_tag_sample('a', [0], [0.3, 0.2, 0.1]),
                            _tag_sample('b', [1], [0.3, bad, 0.1])])
    assert not (tmp_path / 'tags.txt').exists() and not (tmp_path / 'scores.jsonl').exists()


def _stale_temp(folder, name):
    import os
    import time
    path = folder / f'.{name}.abcd1234.tmp'
    path.write_bytes(b'partial')
    old = time.time() - 3600
    os.utime(path, (old, old))
    return path


def test_writer_constructors_touch_nothing(tmp_path):
    """Building the writers (as Runner does from a config) creates, locks and deletes nothing."""
    from tagclip_mmseg.evaluation import PseudoLabelWriter
    tags_temp = _stale_temp(tmp_path, 'tags.txt')
    masks_temp = _stale_temp(tmp_path, 'a.png')
    before = sorted(p.name for p in tmp_path.iterdir())
    TagFileWriter(out_file=str(tmp_path / 'new' / 'tags.txt'))
    TagFileWriter(out_file=str(tmp_path / 'tags.txt'))
    PseudoLabelWriter(out_dir=str(tmp_path))
    PseudoLabelWriter(out_dir=str(tmp_path / 'masks'))
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert tags_temp.exists() and masks_temp.exists()


def test_writer_run_hook_holds_the_locks_from_before_to_after_test(tmp_path):
    from types import SimpleNamespace

    from tagclip_mmseg.engine import WriterRunHook
    from tagclip_mmseg.evaluation import PseudoLabelWriter
    tags = TagFileWriter(out_file=str(tmp_path / 'tags.txt'))
    masks = PseudoLabelWriter(out_dir=str(tmp_path / 'masks'))
    stale = _stale_temp(tmp_path, 'tags.txt')
    runner = SimpleNamespace(test_evaluator=SimpleNamespace(metrics=[tags, masks, object()]))
    hook = WriterRunHook()
    hook.before_test(runner)
    assert (tmp_path / 'tags.txt.lock').exists() and (tmp_path / 'masks' / '.lock').exists()
    assert not stale.exists()  # the temporaries go once the lock is held
    hook.after_test(runner)
    assert not (tmp_path / 'tags.txt.lock').exists()
    assert not (tmp_path / 'masks' / '.lock').exists()


def test_failing_run_releases_the_writer_lock(tmp_path):
    """Mmengine calls no hook when a test run raises; ResumableTestLoop calls on_test_error."""
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    from mmpretrain.structures import DataSample

    from tagclip_mmseg.engine import WriterRunHook
    from tagclip_mmseg.resume.loop import TEST_ERROR_EVENT
    assert hasattr(WriterRunHook, TEST_ERROR_EVENT)
    lock = tmp_path / 'tags.txt.lock'
    seen = []

    class FailingModel(BaseModel):

        def forward(self, inputs, data_samples=None, mode='predict'):
            seen.append(lock.exists())
            raise RuntimeError('the model failed')

    class Images(torch.utils.data.Dataset):
        metainfo = dict(classes=('a', 'b'))

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return dict(inputs=torch.zeros(3, 4, 4),
                        data_samples=DataSample(metainfo=dict(img_id=f'img{i}')))

    runner = Runner(
        model=FailingModel(), work_dir=str(tmp_path / 'work'), default_scope='mmseg',
        test_dataloader=dict(dataset=Images(), batch_size=1,
                             sampler=dict(type='DefaultSampler', shuffle=False)),
        test_cfg=dict(type='ResumableTestLoop'),
        test_evaluator=[dict(type='TagFileWriter', out_file=str(tmp_path / 'tags.txt'))],
        custom_hooks=[dict(type='WriterRunHook')], default_hooks=dict(), env_cfg=dict())
    with pytest.raises(RuntimeError, match='the model failed'):
        runner.test()
    assert seen == [True]  # held while the run went on
    assert not lock.exists()

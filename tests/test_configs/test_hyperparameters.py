"""Every published config's hyperparameters equal the paper's table.

The table is ``docs/hyperparameters.md`` (written from docs/method.md,
sections 4, 6 and 8); this test parses it, loads each config under
``configs/tagclip`` and ``configs/pseudo_labelers`` with mmengine's ``Config``
and compares every value the config sets or leaves to the class's default.
"""
import ast
import glob
import inspect
import os.path as osp
from typing import Dict, List

import pytest
from mmengine.config import Config

from tagclip_mmseg.evaluation import TaggingMetric
from tagclip_mmseg.models.clip.checkpoint import load_clip
from tagclip_mmseg.models.clip.presets import resolve_background, resolve_templates
from tagclip_mmseg.models.pseudo_labelers import CLIPESPseudoLabeler, DenseCRF
from tagclip_mmseg.models.taggers import TagCLIP
from tagclip_mmseg.testing.checkout import repo_root

ROOT = repo_root(__file__)
TABLE = osp.join(ROOT, 'docs', 'hyperparameters.md')
CONFIGS = sorted(
    osp.relpath(p, osp.join(ROOT, 'configs'))
    for d in ('tagclip', 'pseudo_labelers')
    for p in glob.glob(osp.join(ROOT, 'configs', d, '*.py')))
NA = '—'
#: Input resolution of OpenAI's ViT-B/16, the CLIP of every published config.
VIT_B16_RESOLUTION = 224


def markdown_tables(path: str) -> List[List[List[str]]]:
    """Every table of a markdown file as rows of stripped cells.

    The header comes first; the |---| line is dropped.
    """
    tables, rows = [], []
    for line in open(path, encoding='utf-8').read().splitlines() + ['']:
        if line.startswith('|'):
            cells = [c.strip() for c in line.strip().strip('|').split('|')]
            if not all(set(c) <= set('-: ') for c in cells):
                rows.append(cells)
        elif rows:
            tables.append(rows)
            rows = []
    return tables


def literal(cell: str):
    return NA if cell == NA else ast.literal_eval(cell)


def load_table():
    """(settings: key -> column -> value, configs: path -> (column, crf))."""
    settings, configs = {}, {}
    for table in markdown_tables(TABLE):
        header = table[0]
        if header[0] == 'key':
            for row in table[1:]:
                settings[row[0].strip('`')] = {
                    col: literal(cell) for col, cell in zip(header[1:5], row[1:5])}
        elif header[0] == 'config':
            for row in table[1:]:
                configs[row[0].strip('`')] = (row[1], literal(row[2]))
    return settings, configs


SETTINGS, CONFIG_ROWS = load_table()


def defaults(fn) -> Dict[str, object]:
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def resolved(fn, cfg: dict) -> dict:
    """The keyword arguments a build of ``cfg`` passes to ``fn``.

    ``fn`` is a class or function; its defaults are filled in.
    """
    return {**defaults(fn), **{k: v for k, v in cfg.items() if k != 'type'}}


def normalise(value):
    """Config lists and tuples compare as tuples; ints as floats."""
    if isinstance(value, (list, tuple, range)):
        return tuple(normalise(v) for v in value)
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def model_values(prefix: str, cfg: dict, cls) -> Dict[str, object]:
    """``prefix.key -> value`` for the table's keys of one model config."""
    args = resolved(cls, cfg)
    clip = resolved(load_clip, args['clip'] or {})
    out = {f'{prefix}.clip.dtype': clip['dtype']}
    for key in SETTINGS:
        if not key.startswith(prefix + '.') or key in out:
            continue
        name = key.split('.', 1)[1]
        if name == 'num_templates':
            out[key] = len(resolve_templates(args['templates']))
        elif name == 'num_background_words':
            out[key] = len(resolve_background(args['background_words']))
        elif name == 'templates':
            out[key] = resolve_templates(args['templates'])
        elif name == 'cwr_crop_size' and args[name] is None:
            out[key] = VIT_B16_RESOLUTION  # None: the CLIP's input resolution
        else:
            out[key] = args[name]
    return out


def test_table_lists_every_config_and_every_column():
    assert sorted(CONFIG_ROWS) == CONFIGS, 'add new configs to docs/hyperparameters.md'
    columns = {col for row in SETTINGS.values() for col in row}
    assert {setting for setting, _ in CONFIG_ROWS.values()} <= columns
    assert len(SETTINGS) >= 25


@pytest.mark.parametrize('path', CONFIGS)
def test_config_hyperparameters_equal_the_table(path):
    cfg = Config.fromfile(osp.join(ROOT, 'configs', path))
    setting, crf_thr = CONFIG_ROWS[path]
    model = cfg.model.to_dict()
    values = {}
    if model['type'] == 'TagCLIP':
        tagger, labeler = model, None
    else:
        assert model['type'] == 'CLIPESPseudoLabeler'
        tagger, labeler = model.get('tagger'), model
    if tagger is not None:
        values.update(model_values('tagger', tagger, TagCLIP))
    if labeler is not None:
        values.update(model_values('labeler', labeler, CLIPESPseudoLabeler))
        crf = labeler.get('crf')
        if crf_thr == NA:
            assert crf is None, f'{path} has a CRF; the table says it has none'
        else:
            assert crf is not None, f'{path} has no CRF; the table says it has one'
            crf_args = resolved(DenseCRF, crf)
            assert crf_args['confidence_thr'] == crf_thr
            values.update({key: crf_args[key.split('.', 1)[1]] for key in SETTINGS
                           if key.startswith('crf.')})
    evaluators = cfg.get('test_evaluator', [])
    for metric in evaluators if isinstance(evaluators, list) else [evaluators]:
        if metric['type'] == 'TaggingMetric':
            values['metric.ratio'] = resolved(TaggingMetric, metric)['ratio']
    assert values, f'{path} sets nothing the table covers'
    for key, value in values.items():
        expected = SETTINGS[key][setting]
        assert expected != NA, f'{key} is not used in setting {setting} but {path} sets it'
        assert normalise(value) == normalise(expected), (path, key, value, expected)

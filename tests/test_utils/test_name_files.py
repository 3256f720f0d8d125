r"""Name files as the peers write them: separators, quirks, refusals, tools.

Every style is checked against the peers' own reader (``get_cls_idx`` of
SCLIP / ProxyCLIP / ClearCLIP: ``open(path).readlines()``, a literal
``line.split(sep)`` per line, ``'\n'`` removed, nothing else) and against what
CLIP's tokenizer makes of the peers' raw names.
"""
import json
import warnings

import pytest

from tagclip_mmseg.models.clip.presets import resolve_background, resolve_classes
from tagclip_mmseg.models.clip.tokenizer import get_tokenizer
from tagclip_mmseg.utils.name_files import (NameFileError, read_background_words, read_class_names,
                                            read_name_file)


def peers_reader(path, sep):
    """The peers' ``get_cls_idx``, verbatim in behaviour: one list of names per line."""
    with open(path) as f:
        name_sets = f.readlines()
    return [[name.replace('\n', '') for name in line.split(sep)] for line in name_sets]


# (file bytes, separator the peers use, our separator argument, expected lines)
STYLES = {
    # SCLIP / NACLIP: ', ' with synonyms, background words on line 1, no final newline.
    'comma-space': (b'sky, wall, tree\naeroplane\nperson, person in shirt, person in jeans\n'
                    b'television monitor, tv monitor', ', ', None,
                    [['sky', 'wall', 'tree'], ['aeroplane'],
                     ['person', 'person in shirt', 'person in jeans'],
                     ['television monitor', 'tv monitor']]),
    # ProxyCLIP / Trident / CorrCLIP v2: '; ' with commas inside names.
    'semicolon': (b'sky; wall; building\ncar\npeople, person\nrider; cyclist', '; ', None,
                  [['sky', 'wall', 'building'], ['car'], ['people, person'],
                   ['rider', 'cyclist']]),
    # ADE-847 of the '; ' peers: one WordNet name per line, no '; ' anywhere.
    'ade847': (b'wall\nbuilding, edifice\nsky\n'
               b'television receiver, television, television set, tv, tv set', '; ', '; ',
               [['wall'], ['building, edifice'], ['sky'],
                ['television receiver, television, television set, tv, tv set']]),
    # ClearCLIP: ',' without spaces.
    'comma': (b'sky,wall,tree\naeroplane\nperson,person in shirt', ',', None,
              [['sky', 'wall', 'tree'], ['aeroplane'], ['person', 'person in shirt']]),
    # ProxyCLIP's cls_context459.txt: CRLF line ends.
    'crlf': (b'sky; wall\r\nboat\r\ndining table; table\r\n', '; ', None,
             [['sky', 'wall'], ['boat'], ['dining table', 'table']]),
    # A final newline (none of the peers' files has one).
    'final-newline': (b'cat\ndog, puppy\n', ', ', None, [['cat'], ['dog', 'puppy']]),
    # SCLIP's cls_context60.txt ends in 'wood ' (trailing space).
    'trailing-space': (b'sky, grass\nwindow\nwood ', ', ', None,
                       [['sky', 'grass'], ['window'], ['wood']]),
}


@pytest.mark.parametrize('style', sorted(STYLES))
def test_every_style_reads_as_the_peers_reader(style, tmp_path):
    data, peer_sep, sep, expected = STYLES[style]
    path = tmp_path / f'{style}.txt'
    path.write_bytes(data)
    names = read_name_file(str(path), sep)
    assert [list(line) for line in names.lines] == expected
    peers = peers_reader(path, peer_sep)
    assert [[n.strip() for n in line] for line in peers] == expected
    # What CLIP reads of the peers' raw names ('wood ' included) is what we embed.
    tokenizer = get_tokenizer()
    for ours, theirs in zip(names.lines, peers):
        for a, b in zip(ours, theirs):
            assert tokenizer.encode(f'a photo of a {a}.') == tokenizer.encode(f'a photo of a {b}.')
    classes = read_class_names(str(path), sep)
    assert classes == [line[0] if len(line) == 1 else line for line in expected]


def test_separator_is_detected_per_file(tmp_path):
    semicolon, comma = tmp_path / 'a.txt', tmp_path / 'b.txt'
    semicolon.write_text('sky; wall\npeople, person')
    comma.write_text('building, edifice\nsky')
    assert read_name_file(str(semicolon)).sep == '; '
    assert read_name_file(str(comma)).sep == ','
    # Without '; ' anywhere an ADE-847 line is split on ','; the explicit separator keeps it.
    assert read_class_names(str(comma)) == [['building', 'edifice'], 'sky']
    assert read_class_names(str(comma), sep='; ') == ['building, edifice', 'sky']


def test_duplicate_name_is_kept_with_one_warning_naming_the_lines(tmp_path):
    # SCLIP's cls_coco_object.txt: 'bed' is a background word on line 1 and class 61.
    path = tmp_path / 'coco_object.txt'
    path.write_text('sky, bed, wall\nperson\nbed\ntoilet')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        names = read_name_file(str(path), first_line='background')
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "'bed' on lines 1, 3" in messages[0] and 'coco_object.txt' in messages[0]
    assert names.classes() == ['person', 'bed', 'toilet']
    assert names.background_words() == ['sky', 'bed', 'wall']
    peers = peers_reader(path, ', ')
    assert [n for line in peers for n in line].count('bed') == 2


def test_first_line_background_maps_the_peers_voc21_file(tmp_path):
    path = tmp_path / 'cls_voc21.txt'
    path.write_bytes(STYLES['comma-space'][0])
    names = read_name_file(str(path), first_line='background')
    assert names.background_words() == ['sky', 'wall', 'tree']
    assert names.classes() == ['aeroplane', ['person', 'person in shirt', 'person in jeans'],
                               ['television monitor', 'tv monitor']]
    # Without it every line is a class, the background line included.
    assert read_class_names(str(path))[0] == ['sky', 'wall', 'tree']
    assert read_background_words(str(path)) == [
        'sky', 'wall', 'tree', 'aeroplane', 'person', 'person in shirt', 'person in jeans',
        'television monitor', 'tv monitor']
    # Configs and Python calls: a path, or dict(file=..., sep=..., first_line=...).
    spec = dict(file=str(path), first_line='background')
    assert resolve_classes(spec) == tuple(names.classes())
    assert resolve_background(spec) == ('sky', 'wall', 'tree')
    assert resolve_classes(str(path))[1] == 'aeroplane'


@pytest.mark.parametrize('data, sep, fragments', [
    (b'', None, ['is empty']),
    (b'\n', None, ['is empty']),
    (b'cat\n\ndog', None, ['line 2', 'blank line']),
    (b'cat\ndog\n\n', None, ['line 3', 'blank line']),
    (b'cat\n  \ndog', None, ['line 2', 'blank line']),
    (b'cat\ndog,,puppy', None, ['line 2', 'empty name']),
    (b'cat\ndog, ', None, ['line 2', 'empty name']),
    (b'sky; ; wall\ncat', '; ', ['line 1', 'empty name']),
], ids=['empty', 'only-newline', 'blank-middle', 'blank-end', 'blank-spaces', 'double-comma',
        'trailing-comma', 'double-semicolon'])
def test_refusals_name_file_and_line(data, sep, fragments, tmp_path):
    path = tmp_path / 'bad.txt'
    path.write_bytes(data)
    with pytest.raises(NameFileError) as excinfo:
        read_name_file(str(path), sep)
    message = str(excinfo.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.txt'):
        read_name_file(str(tmp_path / 'nope.txt'))
    path = tmp_path / 'one.txt'
    path.write_text('cat')
    with pytest.raises(NameFileError, match='separator'):
        read_name_file(str(path), sep=' ')
    with pytest.raises(NameFileError, match='background line and at least one class'):
        read_name_file(str(path), first_line='background')
    with pytest.raises(ValueError, match='unknown class vocabulary preset'):
        resolve_classes('vocc')


# ------------------------------------------------------------------ tools
ADE847_TINY = ('wall\nbuilding, edifice\nsky\nfloor, flooring\n'
               'television receiver, television, television set, tv, tv set')


@pytest.fixture(scope='module')
def photo_folder(tmp_path_factory):
    """``JPEGImages/photo0.jpg``, ``photo1.jpg`` and ``list.txt`` naming them."""
    import numpy as np
    from PIL import Image
    root = tmp_path_factory.mktemp('name_file_photos')
    (root / 'JPEGImages').mkdir()
    rng = np.random.default_rng(3)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
            root / 'JPEGImages' / f'photo{i}.jpg')
    (root / 'list.txt').write_text('photo0\nphoto1\n')
    return root


@pytest.mark.slow
def test_tools_test_reads_an_ade847_style_file(photo_folder, tiny_tool_options, tool_runner,
                                               tmp_path):
    classes = tmp_path / 'cls_ade847_tiny.txt'
    classes.write_text(ADE847_TINY)
    scores = tmp_path / 'scores.jsonl'
    proc = tool_runner.subprocess(
        'tools/test.py', 'configs/tagclip/tagclip_vit-b16_folder.py', '--classes', str(classes),
        '--classes-sep', '; ', '--data-root', str(photo_folder / 'JPEGImages'), '--work-dir',
        str(tmp_path / 'work'), '--cfg-options', *tiny_tool_options['tag'],
        f'test_evaluator.0.out_file={tmp_path / "tags.txt"}',
        f'test_evaluator.0.scores_file={scores}')
    out = proc.stdout + proc.stderr
    print(out[-2000:])
    assert f"vocabulary: 5 classes from {classes} (sep '; ')" in out, out[-3000:]
    records = [json.loads(line) for line in scores.read_text().splitlines() if line.strip()]
    assert len(records) == 2
    assert all(len(r['scores']) == 5 for r in records), records[0]


def test_tagging_tool_background_line(photo_folder, tiny_tool_options, tool_runner, tmp_path):
    path = tmp_path / 'cls_tiny.txt'
    path.write_text('sky, wall\ncat\ndog, puppy')

    def tag(*flags):
        tool_runner.inprocess(
            'tools/test.py', 'configs/tagclip/tagclip_vit-b16_folder.py', *flags,
            '--data-root', str(photo_folder / 'JPEGImages'), '--work-dir', str(tmp_path / 'work'),
            '--cfg-options', *tiny_tool_options['tag'],
            f'test_evaluator.0.out_file={tmp_path / "tags.txt"}',
            f'test_evaluator.0.scores_file={tmp_path / "scores.jsonl"}')

    with pytest.raises(ValueError, match='--background-line needs --classes'):
        tag('--background-line')
    tag('--classes', str(path), '--background-line')
    records = [json.loads(line) for line in (tmp_path / 'scores.jsonl').read_text().splitlines()]
    assert [len(r['scores']) for r in records] == [2, 2]


def test_pseudo_label_tool_checks_the_class_count(photo_folder, tiny_tool_options, tool_runner,
                                                  pl_list_config, tmp_path):
    from tagclip_mmseg.utils.class_names import VOC_CLASSES
    tags = tmp_path / 'tags.txt'
    tags.write_text('photo0 2\nphoto1\n')
    voc21 = tmp_path / 'cls_voc21.txt'
    voc21.write_text('sky, wall, tree\n' + '\n'.join(VOC_CLASSES))

    def label(*flags):
        tool_runner.inprocess(
            'tools/generate_pseudo_labels.py', pl_list_config, '--out', str(tmp_path / 'out'),
            '--tags', str(tags), *flags, '--cfg-options', *tiny_tool_options['pl'],
            f'test_dataloader.dataset.data_root={photo_folder}',
            'test_dataloader.dataset.ann_file=list.txt')

    # Line 1 read as a class: 21 classes against VOC's 20 tag classes.
    with pytest.raises(ValueError, match='model has 21 classes but the test dataset has 20') as e:
        label('--classes', str(voc21))
    assert '--background-line' in str(e.value)
    label('--classes', str(voc21), '--background-line', '--overwrite')
    assert sorted(p.name for p in (tmp_path / 'out').glob('*.png')) == ['photo0.png', 'photo1.png']


def test_dataset_metainfo_reads_name_files(photo_folder, tmp_path):
    from tagclip_mmseg.datasets import MultiLabelImageFolder, TaggedSegDataset
    classes = tmp_path / 'my_classes.txt'
    classes.write_text('espresso cup\nperson, people\n')
    ds = MultiLabelImageFolder(data_root=str(photo_folder / 'JPEGImages'), ann_file='',
                               metainfo=dict(classes=str(classes)), test_mode=True, pipeline=[])
    assert ds.metainfo['classes'] == ('espresso cup', 'person')
    assert ds.metainfo['class_names'] == ['espresso cup', ['person', 'people']]
    voc = tmp_path / 'cls_voc.txt'
    voc.write_text('sky; wall\ncat\ndog; puppy')
    tags = tmp_path / 'tags.txt'
    tags.write_text('photo0 1\nphoto1\n')
    seg = TaggedSegDataset(data_root=str(photo_folder), data_prefix=dict(img_path='JPEGImages'),
                           img_suffix='.jpg', tag_source='file', tags_file=str(tags),
                           metainfo=dict(classes=dict(file=str(voc), first_line='background')),
                           pipeline=[])
    assert seg.metainfo['classes'] == ('background', 'cat', 'dog')
    assert seg.metainfo['tag_classes'] == ('cat', 'dog')
    assert seg.metainfo['background_words'] == ['sky', 'wall']


def test_inferencer_takes_a_name_file(deep_tiny_clip_path, tmp_path):
    from tagclip_mmseg.apis import TagCLIPInferencer
    path = tmp_path / 'my classes.txt'
    path.write_text('espresso cup\r\nperson; people, crowd\r\n')
    inferencer = TagCLIPInferencer(checkpoint=deep_tiny_clip_path, device='cpu',
                                   classes=str(path), background_words=[],
                                   text_cache_dir=str(tmp_path / 'cache'))
    assert inferencer.classes == ['espresso cup', 'person']
    assert inferencer.model.class_names == ('espresso cup', ('person', 'people, crowd'))


@pytest.mark.parametrize('script, has_classes', [
    ('tools/test.py', True), ('tools/generate_pseudo_labels.py', True),
    ('tools/run_pipeline.py', True), ('demo/image_demo.py', True), ('tools/train.py', False)])
def test_help_shows_name_files_not_inner_quotes(script, has_classes, tool_runner, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tool_runner.inprocess(script, '--help')
    assert exit_info.value.code == 0
    text = ' '.join(capsys.readouterr().out.split())
    assert 'inner quotes' not in text
    if has_classes:
        assert '--classes' in text and '--background-words' in text
        assert 'ADE-847-style files' in text and '--classes-sep "; "' in text
    else:
        assert 'name file' in text and 'removes every space' in text

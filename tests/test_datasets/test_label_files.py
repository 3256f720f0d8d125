"""The "image_id idx idx ..." label-file reader and writer."""
import pytest

from tagclip_mmseg.datasets.label_files import (LabelFileError, format_label_line, read_id_list,
                                                read_label_file, write_label_file)
from tagclip_mmseg.utils.class_names import (COCO_CATEGORY_IDS, COCO_CLASSES, COCOSTUFF_27_CLASSES,
                                             COCOSTUFF_171_CLASSES, COCOSTUFF_182_TO_27,
                                             COCOSTUFF_182_TO_171, VOC_CLASSES, voc_palette)


def _write(tmp_path, text, name='labels.txt'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_reads_tagclip_format(tmp_path):
    path = _write(tmp_path, '000001 11 14\n000002 18\n\n000003\n   \n000004\t6  2\n')
    assert read_label_file(path, num_classes=20) == {
        '000001': [11, 14], '000002': [18], '000003': [], '000004': [6, 2]}
    assert list(read_label_file(path)) == ['000001', '000002', '000003', '000004']


def test_duplicate_indices_on_a_line_are_merged(tmp_path):
    assert read_label_file(_write(tmp_path, 'a 3 1 3\n')) == {'a': [3, 1]}


@pytest.mark.parametrize('text, message, line', [
    ('a 1\nb 1,2\n', 'commas', 2),
    ('a,1\n', 'commas', 1),
    ('a 1\nb 20\n', 'outside the 20 classes', 2),
    ('a -1\n', 'outside the 20 classes', 1),
    ('a 1\nb 1.5\n', 'not an integer', 2),
    ('a 1\nb cat\n', 'not an integer', 2),
    ('a 1\nb 2\n\na 3\n', 'duplicate image id', 4),
])
def test_errors_name_file_and_line(tmp_path, text, message, line):
    path = _write(tmp_path, text)
    with pytest.raises(LabelFileError, match=message) as info:
        read_label_file(path, num_classes=20)
    assert f'{path}:{line}' in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.txt'):
        read_label_file(tmp_path / 'nope.txt')


def test_index_map_translates_cocostuff_ids(tmp_path):
    # 182-space ids: 0 person, 12 stop sign (-> 11), 181 wood (-> 170)
    path = _write(tmp_path, 'x 0 12 181\n')
    assert read_label_file(path, 171, COCOSTUFF_182_TO_171) == {'x': [0, 11, 170]}
    with pytest.raises(LabelFileError, match='index map'):  # 11 = street sign, unused
        read_label_file(_write(tmp_path, 'y 11\n', 'bad.txt'), 171, COCOSTUFF_182_TO_171)


def test_id_list(tmp_path):
    assert read_id_list(_write(tmp_path, 'a\n\nb 1 2\nc\n')) == ['a', 'b', 'c']
    with pytest.raises(LabelFileError, match='duplicate'):
        read_id_list(_write(tmp_path, 'a\na\n', 'dup.txt'))


def test_write_round_trip(tmp_path):
    labels = {'img_1': [3, 0], 'img_2': [], 'sub/img_3': [19]}
    path = tmp_path / 'out' / 'tags.txt'
    write_label_file(path, labels)
    assert path.read_text() == 'img_1 3 0\nimg_2\nsub/img_3 19\n'
    assert read_label_file(path, 20) == labels
    write_label_file(path, [('z', [1])])  # pairs work too and replace the file
    assert read_label_file(path) == {'z': [1]}


def test_write_rejects_empty_and_repeated_ids(tmp_path):
    with pytest.raises(ValueError, match='cannot be written'):
        format_label_line('', [1])
    path = tmp_path / 'tags.txt'
    with pytest.raises(ValueError):
        write_label_file(path, {'': [1]})
    assert not path.exists()
    with pytest.raises(ValueError, match='twice'):
        write_label_file(path, [('a', [1]), ('a', [2])])


@pytest.mark.parametrize('odd_id', ['a b', 'a,b', 'tab\tid', '100%', 'ü\u2003x'])
def test_ids_the_reader_could_not_split_are_escaped_and_read_back(tmp_path, odd_id):
    line = format_label_line(odd_id, [1])
    assert len(line.split()) == 2 and ',' not in line
    write_label_file(tmp_path / 'tags.txt', {odd_id: [1], 'plain': []})
    assert read_label_file(tmp_path / 'tags.txt') == {odd_id: [1], 'plain': []}
    assert read_id_list(tmp_path / 'tags.txt') == [odd_id, 'plain']


def test_category_tables():
    assert len(VOC_CLASSES) == 20 and len(COCO_CLASSES) == 80
    assert COCO_CLASSES[3] == 'motorbike' and COCO_CLASSES[62] == 'tvmonitor'
    assert len(COCO_CATEGORY_IDS) == 80 and COCO_CATEGORY_IDS[:12] == tuple(range(1, 12)) + (13, )
    assert COCO_CATEGORY_IDS[-1] == 90
    assert len(COCOSTUFF_171_CLASSES) == len(set(COCOSTUFF_171_CLASSES)) == 171
    assert 'pottedplant' in COCOSTUFF_171_CLASSES and 'tv' in COCOSTUFF_171_CLASSES
    assert len(COCOSTUFF_27_CLASSES) == 27
    # The standard fine -> coarse table on a few known entries.
    assert COCOSTUFF_182_TO_27[0] == COCOSTUFF_27_CLASSES.index('person')
    assert COCOSTUFF_182_TO_27[119] == COCOSTUFF_27_CLASSES.index('water')  # fog
    assert COCOSTUFF_182_TO_27[181] == COCOSTUFF_27_CLASSES.index('solid')  # wood
    assert sorted(set(COCOSTUFF_182_TO_27)) == list(range(27))
    assert [i for i, v in enumerate(COCOSTUFF_182_TO_171) if v < 0] == [
        11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90]
    assert voc_palette(21)[:3] == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    assert voc_palette(21)[20] == [0, 64, 128]
    assert len({tuple(c) for c in voc_palette(256)}) == 256

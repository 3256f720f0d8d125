"""The feature checks of ``tagclip_mmseg.utils.torch_compat`` on the running torch.

CI runs this file on both ends of the tested range (``make test`` and ``make
test-classic``), so each check is exercised once with and once without the
feature.
"""
import io
import pickle
import warnings
from fractions import Fraction

import pytest
import torch

from tagclip_mmseg.utils import refused_globals, torch_compat
from tagclip_mmseg.utils.torch_compat import (TORCH_MIN, TORCH_NEWEST_TESTED, autocast_supports,
                                              check_mmcv_ops, check_torch_version,
                                              has_named_safe_globals, is_autocast_enabled,
                                              load_weights_only)

pytestmark = pytest.mark.classic

RANGE = '%d.%d to %d.%d' % (*TORCH_MIN, *TORCH_NEWEST_TESTED)


def torch_minor():
    major, minor = torch.__version__.split('+')[0].split('.')[:2]
    return int(major), int(minor)


def test_installed_torch_is_in_the_tested_range():
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        check_torch_version()
    assert TORCH_MIN <= torch_minor() <= TORCH_NEWEST_TESTED


@pytest.mark.parametrize('version', ['2.0.1', '1.13.1+cu117', '2.0.0a0+gitabc'])
def test_older_torch_is_refused_naming_the_range(version):
    with pytest.raises(ImportError) as info:
        check_torch_version(version)
    assert f'torch {version} is installed' in str(info.value)
    assert f'tested range: torch {RANGE}' in str(info.value)


def test_newer_torch_warns_naming_the_range():
    newer = '%d.%d.0' % (TORCH_NEWEST_TESTED[0], TORCH_NEWEST_TESTED[1] + 1)
    with pytest.warns(UserWarning, match=f'newer than the tested range \\(torch {RANGE}\\)'):
        check_torch_version(newer)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        check_torch_version('%d.%d.2+cu121' % TORCH_MIN)


def test_mmcv_ops_that_do_not_load_name_the_fix():
    import mmcv
    check_mmcv_ops()  # the real ops load on both CI stacks

    def undefined_symbol():
        raise ImportError('/x/mmcv/_ext.cpython-311-x86_64-linux-gnu.so: undefined symbol: '
                          '_ZN3c104cuda9SetDeviceEi')

    with pytest.raises(ImportError) as info:
        check_mmcv_ops(undefined_symbol)
    message = str(info.value)
    for fragment in (f'mmcv {mmcv.__version__}', f'torch {torch.__version__}',
                     'undefined symbol: _ZN3c104cuda9SetDeviceEi', 'mim install mmcv==2.1.0',
                     'MMCV_WITH_OPS=1 pip install --no-build-isolation --no-cache-dir'):
        assert fragment in message, fragment


class OpenMarker:
    """Unpickling this calls ``open(marker, 'w')``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


class NamedFraction(Fraction):
    """Stands in for ``fractions.Fraction`` under that name."""


def saved(obj) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


#: The two ways of loading with an allowlist: whichever this torch has, and
#: the restricted unpickler (which every torch runs).
LOADERS = {
    'load_weights_only': load_weights_only,
    'restricted': lambda f, map_location=None, safe_globals=(): torch_compat._load_restricted(
        f, map_location, safe_globals),
}


@pytest.mark.parametrize('loader', sorted(LOADERS))
def test_allowlisted_globals_load_and_others_are_refused(loader, tmp_path):
    load = LOADERS[loader]
    obj = {'w': torch.arange(3.), 'ratio': Fraction(3, 7)}
    loaded = load(saved(obj), 'cpu', [Fraction])
    assert torch.equal(loaded['w'], obj['w']) and loaded['ratio'] == Fraction(3, 7)
    path = str(tmp_path / 'fraction.pth')
    torch.save(obj, path)
    assert load(path, 'cpu', [Fraction])['ratio'] == Fraction(3, 7)
    # Not in the allowlist: refused, and the file's structure names the global.
    with pytest.raises(pickle.UnpicklingError) as info:
        load(path, 'cpu', [NamedFraction])
    assert 'fractions.Fraction' in refused_globals(path, info.value)
    # Code in the file never runs.
    marker = tmp_path / 'code_ran'
    evil = str(tmp_path / 'evil.pth')
    torch.save({'x': OpenMarker(str(marker))}, evil)
    with pytest.raises(pickle.UnpicklingError) as info:
        load(evil, 'cpu', [Fraction])
    assert refused_globals(evil, info.value) and not marker.exists()


@pytest.mark.parametrize('loader', sorted(LOADERS))
def test_allowlist_entries_with_a_name(loader):
    load = LOADERS[loader]
    if loader == 'load_weights_only' or has_named_safe_globals():
        loaded = load(saved({'r': Fraction(2, 9)}), None, [(NamedFraction, 'fractions.Fraction')])
        assert type(loaded['r']) is NamedFraction and loaded['r'] == Fraction(2, 9)


def test_named_safe_globals_check_matches_the_release():
    # torch.serialization.safe_globals with (object, name) entries: torch 2.6.
    assert has_named_safe_globals() == (torch_minor() >= (2, 6))


def test_plain_weights_load_without_an_allowlist(tmp_path):
    loaded = load_weights_only(saved({'w': torch.ones(2, dtype=torch.float16)}))
    assert loaded['w'].dtype == torch.float16
    path = str(tmp_path / 'fraction.pth')
    torch.save({'r': Fraction(1, 3)}, path)
    with pytest.raises(pickle.UnpicklingError) as info:
        load_weights_only(path)
    assert refused_globals(path, info.value) == ['fractions.Fraction']


def test_is_autocast_enabled_per_device_type():
    assert not is_autocast_enabled('cpu')
    with torch.autocast(device_type='cpu', dtype=torch.bfloat16):
        assert is_autocast_enabled('cpu')
        assert is_autocast_enabled('cuda') == torch.is_autocast_enabled()
    assert not is_autocast_enabled('cpu')


def observed_autocast_dtype(dtype):
    """The dtype of a matmul under ``torch.autocast('cpu', dtype)`` (None.

    Refused).
    """
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            with torch.autocast(device_type='cpu', dtype=dtype):
                return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        except RuntimeError:
            return None


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_cpu_autocast_dtypes(dtype):
    assert autocast_supports('cpu', dtype) == (observed_autocast_dtype(dtype) == dtype)
    assert autocast_supports('cpu', torch.bfloat16)


def test_autocast_check_is_false_for_a_missing_device():
    if not torch.cuda.is_available():
        assert not autocast_supports('cuda', torch.float16)


def test_refusals_are_recognised_by_structure_whatever_torch_says(tmp_path):
    """Torch 2.1-2.3, 2.4+ and 2.9 word a refusal differently.

    The file's own pickle opcodes decide, not the message.
    """
    import os
    path = str(tmp_path / 'evil.pth')
    torch.save({'x': OpenMarker(str(tmp_path / 'never'))}, path)
    for message in ('WeightsUnpickler error: Unsupported class posix.system',
                    'Unsupported global: GLOBAL builtins.open was not an allowed global',
                    'unsupported GLOBAL posix.system whose module posix is blocked',
                    'some future wording'):
        refused = refused_globals(path, pickle.UnpicklingError(message))
        assert refused and any(n.endswith('open') or n.endswith('system') or 'OpenMarker' in n
                               for n in refused), refused
    # Random bytes are a damaged file, not a refusal, whatever the message.
    junk = str(tmp_path / 'junk.pth')
    with open(junk, 'wb') as f:
        f.write(os.urandom(512))
    assert refused_globals(junk, pickle.UnpicklingError('Unsupported operand 248')) is None

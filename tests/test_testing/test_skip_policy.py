"""``--strict-skips`` (tagclip_mmseg/testing/skip_policy.py): CI fails on a skip for a bad reason.

Each case runs pytest in a fresh interpreter on a tiny generated test file,
with the policy loaded as ``-p tagclip_mmseg.testing.skip_policy`` and no CUDA device visible, and
checks the session's exit status and the listed offenders.
"""
import os
import subprocess
import sys
import textwrap

import pytest

from tagclip_mmseg.testing import skip_policy
from tagclip_mmseg.testing.checkout import repo_root, tool_env

REPO = repo_root(__file__)
ROOT = hasattr(os, 'geteuid') and os.geteuid() == 0


def run_session(tmp_path, source, strict=True):
    """Run pytest on ``source`` (a test module); return (exit status, output)."""
    (tmp_path / 'pytest.ini').write_text('[pytest]\n')
    (tmp_path / 'test_generated.py').write_text(textwrap.dedent(source))
    env = {k: v for k, v in os.environ.items() if not k.startswith('PYTEST_')}
    env = tool_env(REPO, base=env, PYTHONDONTWRITEBYTECODE='1')
    cmd = [sys.executable, '-m', 'pytest', '-p', 'tagclip_mmseg.testing.skip_policy',
           '-p', 'no:cacheprovider',
           '-p', 'no:randomly', '-rs', 'test_generated.py'] + (['--strict-skips'] if strict else [])
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


DATA_SKIP = """
    import pytest

    def test_needs_photos():
        pytest.skip('real images not found at /nowhere/real_images')

    def test_passes():
        pass
"""


def test_data_skip_fails_the_session_and_is_listed(tmp_path):
    code, out = run_session(tmp_path, DATA_SKIP)
    assert code == 1, out
    assert 'skip policy' in out
    assert ('SKIPPED test_generated.py::test_needs_photos: real images not found at '
            '/nowhere/real_images') in out


def test_policy_is_off_without_the_option(tmp_path):
    code, out = run_session(tmp_path, DATA_SKIP, strict=False)
    assert code == 0, out
    assert 'skip policy' not in out


def test_cuda_skip_xfail_and_passes_are_fine(tmp_path):
    code, out = run_session(tmp_path, """
        import pytest

        @pytest.mark.skipif(True, reason='needs a CUDA device')
        def test_on_gpu():
            pass

        def test_gpu_in_body():
            pytest.skip('no GPU available')

        @pytest.mark.xfail(reason='known bug, not a skip', strict=True)
        def test_known_bug():
            assert False

        def test_passes():
            pass
    """)
    assert code == 0, out
    assert '2 skipped' in out and '1 xfailed' in out and 'skip policy' not in out


def test_missing_dependency_at_collection_fails(tmp_path):
    code, out = run_session(tmp_path, """
        import pytest

        pytest.importorskip('a_package_that_is_not_installed')

        def test_never_runs():
            pass
    """)
    assert code == 1, out
    assert "SKIPPED test_generated.py: could not import 'a_package_that_is_not_installed'" in out


def test_bad_skip_does_not_hide_a_failure(tmp_path):
    code, out = run_session(tmp_path, DATA_SKIP + """
    def test_fails():
        assert False
""")
    assert code == 1, out
    assert '1 failed' in out and 'skip policy' in out


def test_root_skip_is_fine_only_as_root(tmp_path):
    code, out = run_session(tmp_path, """
        import pytest

        @pytest.mark.skipif(True, reason='running as root: root ignores directory permissions')
        def test_permissions():
            pass
    """)
    assert code == (0 if ROOT else 1), out


@pytest.mark.parametrize('reason, cuda, root, allowed', [
    ('needs a CUDA device', False, False, True),
    ('needs a CUDA device', True, False, False),  # the machine has a GPU: a bad skip
    ('no GPU available', False, True, True),
    ('root ignores directory permissions', False, True, True),
    ('root ignores directory permissions', False, False, False),
    ('data root not found: /x', False, True, False),
    ("could not import 'pydensecrf': No module named 'pydensecrf'", False, True, False),
    ('/usr/bin/chromium not found; install chromium', False, True, False),
])
def test_allowed_reasons_are_checked_against_the_machine(reason, cuda, root, allowed,
                                                         monkeypatch):
    policy = skip_policy
    monkeypatch.setattr(policy, '_cuda_available', lambda: cuda)
    monkeypatch.setattr(policy, '_running_as_root', lambda: root)
    assert policy.allowed_skip(reason) is allowed

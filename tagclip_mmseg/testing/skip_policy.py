"""A pytest plugin that fails the session when a test skips for a bad reason.

Everything the suite needs ships with the repository (``tests/data/``) or is
a pinned dependency, so in CI a skip means a broken set-up: a missing data
file, a package that did not install, Chromium missing for the page
screenshot. Only two skips describe the machine rather than the set-up, and
only when they are true of the machine that runs the tests:

- a reason that names CUDA or a GPU, when no CUDA device is visible;
- a reason that says the test runs as root, when the effective user is root.

With ``--strict-skips`` (``.ci/run`` passes it to ``make test``) any other
skip, including a module skipped at collection (``pytest.importorskip``),
turns a passing session into a failing one, and the terminal summary lists
each offending test with its reason. Expected failures (``xfail``) are not
skips. ``tests/conftest.py`` loads this file; another session can load it
with ``-p tagclip_mmseg.testing.skip_policy``.
"""
import os
import re
from typing import List, Tuple

import pytest

__all__ = ['STRICT_SKIPS_OPTION', 'allowed_skip', 'skip_reason', 'pytest_addoption',
           'pytest_configure']

#: Command-line flag that turns the policy on.
STRICT_SKIPS_OPTION = '--strict-skips'

_CUDA_REASON = re.compile(r'\b(cuda|gpus?)\b', re.IGNORECASE)
_ROOT_REASON = re.compile(r'\b(as|is|are) root\b|^root\b', re.IGNORECASE)
_PLUGIN_NAME = 'tagclip-skip-policy'


def _cuda_available() -> bool:
    """Whether torch sees a CUDA device (False when torch is not importable)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _running_as_root() -> bool:
    return hasattr(os, 'geteuid') and os.geteuid() == 0


def allowed_skip(reason: str) -> bool:
    """Whether ``reason`` is an acceptable skip on this machine.

    The claim in the reason is checked against the machine, so a "no CUDA"
    skip on a machine with a GPU, or a "running as root" skip by a normal
    user, still counts as a bad skip.
    """
    if _CUDA_REASON.search(reason) and not _cuda_available():
        return True
    return bool(_ROOT_REASON.search(reason)) and _running_as_root()


def skip_reason(report) -> str:
    """The reason text of a skipped test or collection report."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr)
    return reason[len('Skipped: '):] if reason.startswith('Skipped: ') else reason


class SkipPolicy:
    """Collects the bad skips of a session and fails the session on them."""

    def __init__(self) -> None:
        self.bad: List[Tuple[str, str]] = []

    def _record(self, report) -> None:
        if report.skipped and not hasattr(report, 'wasxfail'):
            reason = skip_reason(report)
            if not allowed_skip(reason):
                self.bad.append((report.nodeid or str(report.fspath), reason))

    def pytest_runtest_logreport(self, report) -> None:
        self._record(report)

    def pytest_collectreport(self, report) -> None:
        self._record(report)

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        # Runs before the terminal summary is written; the session's final
        # exit status is read after this hook.
        if self.bad and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.bad:
            return
        terminalreporter.section('skip policy', sep='=', red=True, bold=True)
        terminalreporter.line(
            f'{len(self.bad)} test(s) skipped for a reason other than a missing CUDA device '
            f'or running as root ({STRICT_SKIPS_OPTION}):', red=True)
        for nodeid, reason in self.bad:
            terminalreporter.line(f'SKIPPED {nodeid}: {reason}')


def pytest_addoption(parser) -> None:
    """Add the strict-skips option."""
    parser.addoption(
        STRICT_SKIPS_OPTION, action='store_true', default=False,
        help='fail the session if a test skips for a reason other than a missing CUDA '
        'device or running as root (used by .ci/run)')


def pytest_configure(config) -> None:
    """Register the skip policy when the option is set."""
    if config.getoption(STRICT_SKIPS_OPTION) and not config.pluginmanager.has_plugin(
            _PLUGIN_NAME):
        config.pluginmanager.register(SkipPolicy(), _PLUGIN_NAME)

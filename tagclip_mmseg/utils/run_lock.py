"""One live run per output: a lock file with the owner's pid and host.

A second run refuses to start while the owner is alive; a stale lock on the
same host is taken over, one from another host must be deleted by hand.
"""
import atexit
import json
import logging
import os
import socket
import time
from typing import Optional

from mmengine.logging import print_log

__all__ = ['RunLock', 'OutputInUseError', 'lock_path_for']


class OutputInUseError(RuntimeError):
    """Another live run holds the lock of this output."""


def lock_path_for(output: str) -> str:
    """``<folder>/.lock`` inside a folder output, ``<file>.lock`` next to a file output."""
    output = os.path.normpath(os.path.abspath(os.path.expanduser(output)))
    if os.path.isdir(output):
        return os.path.join(output, '.lock')
    return output + '.lock'


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    try:
        with open(f'/proc/{pid}/stat', encoding='utf-8') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):  # no /proc (macOS...): trust kill()
        return True


class RunLock:
    """Exclusive ownership of one output by one process.

    Args:
        output (str): The file or folder the run writes; the lock is
            :func:`lock_path_for` it.
    """

    def __init__(self, output: str) -> None:
        self.output = output
        self.path = lock_path_for(output)
        self.owner = dict(pid=os.getpid(), host=socket.gethostname())
        self.held = False

    def acquire(self) -> None:
        """Create the lock, taking over a stale one.

        Raises:
            OutputInUseError: If a live run (or one on another host) holds it.
        """
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        record = dict(self.owner, started=time.strftime('%Y-%m-%d %H:%M:%S'))
        for _ in range(2):  # the second try follows the removal of a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._handle_existing()
                continue
            with os.fdopen(fd, 'w') as f:
                f.write(json.dumps(record) + '\n')
            self.held = True
            atexit.register(self.release)  # a run that raises leaves no lock behind
            return
        raise OutputInUseError(f'could not take the lock {self.path}: another run keeps '
                               'creating it')

    def _read(self) -> Optional[dict]:
        try:
            with open(self.path, encoding='utf-8') as f:
                record = json.loads(f.read())
            return record if isinstance(record, dict) else None
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None

    def _handle_existing(self) -> None:
        """Remove a stale lock (logged), or raise if its owner may be alive."""
        record = self._read()
        if record == {}:  # removed meanwhile: just try again
            return
        if record is None or not isinstance(record.get('pid'), int):
            reason = 'an unreadable lock (its writer was killed while creating it)'
        elif record.get('host') == self.owner['host']:
            if record['pid'] == self.owner['pid']:  # this process again (a second writer)
                os.remove(self.path)
                return
            if _pid_alive(record['pid']):
                raise OutputInUseError(
                    f'{self.output} is in use by another run (pid {record["pid"]} on '
                    f'{record["host"]}, started {record.get("started", "?")}; lock '
                    f'{self.path}). Wait for it to finish or stop it first (kill {record["pid"]}'
                    '; a distributed run: kill its launcher, see the README, "Stopping a '
                    'run"), or write to another output.')
            reason = f'a stale lock of pid {record["pid"]}, which is no longer running'
        else:
            raise OutputInUseError(
                f'{self.output} is locked by a run on another host (pid {record.get("pid")} on '
                f'{record.get("host")}, started {record.get("started", "?")}); it cannot be '
                f'checked from here. If that run is gone, delete {self.path} and start again.')
        print_log(f'taking over {reason}: {self.path}', logger='current', level=logging.WARNING)
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        """Remove the lock if this process still owns it."""
        if not self.held:
            return
        self.held = False
        record = self._read()
        if record and record.get('pid') == self.owner['pid'] and \
                record.get('host') == self.owner['host']:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

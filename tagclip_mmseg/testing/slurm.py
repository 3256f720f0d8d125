"""A one-node Slurm cluster on this machine, for the tests of the Slurm scripts.

The daemons run from a temporary folder on 127.0.0.1, without systemd or
cgroups. Debian: ``apt-get install slurm-wlm munge``.
"""
import os
import os.path as osp
import pwd
import shutil
import signal
import socket
import subprocess
import time
from typing import Dict, List, Optional

__all__ = ['LocalSlurm', 'SLURM_BINARIES']

#: Programs the cluster needs (daemons live in ``/usr/sbin`` on Debian).
SLURM_BINARIES = ('munged', 'slurmctld', 'slurmd', 'srun', 'sinfo', 'squeue', 'scancel',
                  'scontrol')

_SEARCH_PATH = os.pathsep.join([os.environ.get('PATH', ''), '/usr/sbin', '/usr/local/sbin'])

_CONF = """\
ClusterName=tagclip
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SrunPortRange={srun_ports}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName={partition} Nodes={host} Default=YES MaxTime=30 State=UP
"""


def _which(name: str) -> Optional[str]:
    return shutil.which(name, path=_SEARCH_PATH)


def _free_ports(count: int) -> List[int]:
    """``count`` distinct TCP ports of 127.0.0.1 that are free now."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(('127.0.0.1', 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


class LocalSlurm:
    """One node (this machine, ``cpus`` CPUs) and one partition, run from ``root``.

    Args:
        root (str): An empty folder for the key, sockets, state and logs.
            Keep it short: a Unix socket path has at most 107 bytes.
        cpus (int): CPUs the node offers. Defaults to 2.
        partition (str): Name of the only partition. Defaults to 'tagclip'.
    """

    def __init__(self, root: str, cpus: int = 2, partition: str = 'tagclip') -> None:
        self.root = osp.abspath(root)
        self.cpus = cpus
        self.partition = partition
        self.conf = osp.join(self.root, 'slurm.conf')
        self._procs: Dict[str, subprocess.Popen] = {}

    @staticmethod
    def missing_binaries() -> List[str]:
        """The programs of :data:`SLURM_BINARIES` that are not installed."""
        return [name for name in SLURM_BINARIES if _which(name) is None]

    def env(self) -> Dict[str, str]:
        """This process's environment with ``SLURM_CONF`` pointing at the cluster."""
        return dict(os.environ, SLURM_CONF=self.conf, PATH=_SEARCH_PATH)

    def start(self, timeout: float = 120.) -> None:
        """Start munged, slurmctld and slurmd; return once the node is idle.

        Raises:
            RuntimeError: If a program is missing, or the node is not idle
                within ``timeout`` seconds (the message holds the daemons' logs).
        """
        missing = self.missing_binaries()
        if missing:
            raise RuntimeError(f'Slurm is not installed ({", ".join(missing)} missing); on '
                               'Debian: apt-get install slurm-wlm munge')
        for sub in ('state', 'spool', 'munge'):
            os.makedirs(osp.join(self.root, sub), mode=0o700, exist_ok=True)
        munge_dir = osp.join(self.root, 'munge')
        key = osp.join(munge_dir, 'munge.key')
        with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400), 'wb') as f:
            f.write(os.urandom(1024))
        munge_socket = osp.join(munge_dir, 'munge.socket')
        ctld_port, slurmd_port, srun_low = _free_ports(3)
        # The node is this host by name: srun's SLURM_NODELIST then names a host
        # that resolves, as on a real cluster (the tasks' MASTER_ADDR comes from it).
        host = socket.gethostname().split('.')[0]
        try:
            socket.gethostbyname(host)
        except OSError as err:
            raise RuntimeError(f"this host's name {host!r} does not resolve ({err}); add it "
                               'to /etc/hosts') from err
        with open(self.conf, 'w') as f:
            f.write(_CONF.format(
                host=host, cpus=self.cpus, partition=self.partition,
                ctld_port=ctld_port, slurmd_port=slurmd_port,
                srun_ports=f'{max(srun_low, 1024)}-{max(srun_low, 1024) + 20}',
                user=_user_name(), munge_socket=munge_socket, root=self.root))
        self._spawn('munged', [
            _which('munged'), '--foreground', '--force', f'--socket={munge_socket}',
            f'--key-file={key}', f'--pid-file={munge_dir}/munged.pid',
            f'--log-file={munge_dir}/munged.log', f'--seed-file={munge_dir}/munged.seed'])
        self._wait(lambda: osp.exists(munge_socket), timeout, 'munged did not open its socket')
        self._spawn('slurmctld', [_which('slurmctld'), '-D', '-i', '-f', self.conf])
        self._spawn('slurmd', [_which('slurmd'), '-D', '-f', self.conf])
        self._wait(self._node_idle, timeout, 'the node did not become idle')

    def stop(self, timeout: float = 30.) -> None:
        """Cancel the partition's jobs, then SIGTERM (later SIGKILL) the daemons it started."""
        ctld = self._procs.get('slurmctld')
        if ctld is not None and ctld.poll() is None:
            try:
                subprocess.run([_which('scancel'), f'--partition={self.partition}'],
                               env=self.env(), capture_output=True, timeout=timeout)
                self._wait(self._no_jobs, timeout, 'the cancelled jobs did not end')
            except (OSError, RuntimeError, subprocess.TimeoutExpired):
                pass  # the daemons go anyway
        for name in ('slurmd', 'slurmctld', 'munged'):
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def logs(self) -> str:
        """The daemons' logs and outputs, each under a header (for failure messages)."""
        parts = []
        for name in ('munge/munged.log', 'slurmctld.log', 'slurmd.log', 'munged.out',
                     'slurmctld.out', 'slurmd.out'):
            path = osp.join(self.root, name)
            if osp.exists(path):
                with open(path, errors='replace') as f:
                    parts.append(f'--- {name}\n{f.read()[-4000:]}')
        return '\n'.join(parts)

    def __enter__(self) -> 'LocalSlurm':
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ internals
    def _spawn(self, name: str, argv: List[str]) -> None:
        with open(osp.join(self.root, f'{name}.out'), 'wb') as out:
            self._procs[name] = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env(), cwd=self.root, start_new_session=True)

    def _node_idle(self) -> bool:
        proc = subprocess.run([_which('sinfo'), '-h', '-N', '-o', '%T'], env=self.env(),
                              capture_output=True, text=True, timeout=30)
        return proc.returncode == 0 and proc.stdout.strip() == 'idle'

    def _no_jobs(self) -> bool:
        proc = subprocess.run([_which('squeue'), '-h', f'--partition={self.partition}'],
                              env=self.env(), capture_output=True, text=True, timeout=30)
        return proc.returncode == 0 and not proc.stdout.strip()

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self._procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f'{", ".join(dead)} exited while starting Slurm:\n'
                                   + self.logs())
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f'{what} within {timeout:.0f} s:\n{self.logs()}')


def _user_name() -> str:
    return pwd.getpwuid(os.getuid()).pw_name

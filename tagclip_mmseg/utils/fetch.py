"""Fetch CLIP checkpoints by name or URL: verified, resumable, once per machine.

See docs/clip_checkpoints.md, "Fetching weights".
"""
import http.client
import os
import os.path as osp
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from typing import IO, Callable, Dict, Optional, Tuple

from filelock import FileLock
from torch.hub import get_dir

from .hashing import file_sha256, remember_sha256

__all__ = [
    'OPENAI_CLIP_URLS', 'CLIP_CACHE_DIR', 'DEFAULT_CLIP_NAME', 'MIRROR_ENV', 'OFFLINE_ENVS',
    'CHECKPOINT_HELP', 'FetchError', 'is_url', 'is_offline', 'expected_sha256', 'clip_url',
    'fetch_target', 'fetch', 'resolve_checkpoint'
]

#: OpenAI's CLIP ViT archives, as ``clip.load`` fetches them; the path segment
#: before the file name is the file's SHA-256.
OPENAI_CLIP_URLS: Dict[str, str] = {
    'ViT-B/32': 'https://openaipublic.azureedge.net/clip/models/'
    '40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt',
    'ViT-B/16': 'https://openaipublic.azureedge.net/clip/models/'
    '5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt',
    'ViT-L/14': 'https://openaipublic.azureedge.net/clip/models/'
    'b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt',
    'ViT-L/14@336px': 'https://openaipublic.azureedge.net/clip/models/'
    '3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt',
}
#: Where ``clip.load`` caches OpenAI's archives; named models are fetched here.
CLIP_CACHE_DIR = '~/.cache/clip'
#: The model a missing default checkpoint stands for.
DEFAULT_CLIP_NAME = 'ViT-B/16'
#: ``BASE`` such that ``BASE/<sha256>/<file>`` serves OpenAI's archives.
MIRROR_ENV = 'TAGCLIP_MMSEG_CLIP_MIRROR'
#: Any of these set to a true value forbids every connection.
OFFLINE_ENVS = ('TAGCLIP_MMSEG_OFFLINE', 'HF_HUB_OFFLINE')

#: ``--help`` text of every command-line flag that takes CLIP weights.
CHECKPOINT_HELP = ('CLIP weights: a file or folder, an OpenAI model name (ViT-B/32, ViT-B/16, '
                   'ViT-L/14, ViT-L/14@336px) or an http(s) URL, fetched and verified once '
                   "(#sha256=HEX pins a URL's hash; TAGCLIP_MMSEG_OFFLINE=1 forbids fetching)")

_SHA256 = re.compile(r'^[0-9a-f]{64}$')
_CHUNK = 1 << 20
_TRUE = ('1', 'true', 'yes', 'on')


class FetchError(OSError):
    """A checkpoint could not be fetched or failed verification.

    An :class:`OSError`, so that the tools' one-line error handling covers it.
    """


def is_url(spec: str) -> bool:
    """Whether ``spec`` is an ``http://`` or ``https://`` URL."""
    return urllib.parse.urlsplit(str(spec)).scheme.lower() in ('http', 'https')


def is_offline() -> bool:
    """Whether an offline variable (:data:`OFFLINE_ENVS`) forbids connections."""
    return any(os.environ.get(name, '').strip().lower() in _TRUE for name in OFFLINE_ENVS)


def expected_sha256(url: str) -> Optional[str]:
    """The SHA-256 a URL names: a ``#sha256=<hex>`` fragment, else a 64-hex path segment.

    Returns:
        str | None: Lower-case hex digest, or None when the URL names none.
    """
    parts = urllib.parse.urlsplit(url)
    fragment = urllib.parse.parse_qs(parts.fragment)
    if 'sha256' in fragment:
        digest = fragment['sha256'][-1].lower()
        if not _SHA256.match(digest):
            raise ValueError(f'{url!r}: the #sha256= fragment must be 64 hex digits')
        return digest
    for segment in reversed(parts.path.split('/')[:-1]):
        if _SHA256.match(segment.lower()):
            return segment.lower()
    return None


def clip_url(name: str) -> str:
    """OpenAI's URL of a named model, or the mirror's when :data:`MIRROR_ENV` is set."""
    url = OPENAI_CLIP_URLS[name]
    mirror = os.environ.get(MIRROR_ENV, '').strip()
    if not mirror:
        return url
    digest, file_name = urllib.parse.urlsplit(url).path.split('/')[-2:]
    return f'{mirror.rstrip("/")}/{digest}/{file_name}#sha256={digest}'


def fetch_target(spec: str) -> Tuple[str, str]:
    """The URL and local file a model name or URL stands for.

    OpenAI's names go to :data:`CLIP_CACHE_DIR` (shared with ``clip.load``);
    other URLs to torch hub's checkpoint folder, as mmengine does.

    Returns:
        tuple: ``(url, local path)``.
    """
    if spec in OPENAI_CLIP_URLS:
        url = clip_url(spec)
        folder = osp.expanduser(CLIP_CACHE_DIR)
    elif is_url(spec):
        url = spec
        folder = osp.join(get_dir(), 'checkpoints')
    else:
        raise ValueError(f'{spec!r} is neither a model name ({", ".join(OPENAI_CLIP_URLS)}) '
                         'nor an http(s) URL')
    file_name = osp.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    if not file_name or file_name in ('.', '..'):
        raise ValueError(f'{url!r} names no file to save')
    return url, osp.join(folder, file_name)


def _place_by_hand(url: str, target: str, name: Optional[str] = None) -> str:
    what = f'{name!r} ({url})' if name else url
    return (f'Fetch {what} on a machine with internet access (or through a mirror, '
            f'{MIRROR_ENV}=BASE) and place it at {target}, or point the checkpoint setting '
            'at a local copy.')


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s), and never from https down to http."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        old = urllib.parse.urlsplit(req.full_url).scheme.lower()
        new = urllib.parse.urlsplit(newurl).scheme.lower()
        if new not in ('http', 'https') or (old == 'https' and new == 'http'):
            raise FetchError(f'refused a redirect from {req.full_url} to {newurl}: only http(s) '
                             'is followed, and never from https to http')
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Progress:
    """A one-line progress report (size, percent, speed) on stderr."""

    def __init__(self, url: str, total: Optional[int], start: int,
                 stream: Optional[IO] = None) -> None:
        self.total, self.done, self.stream = total, start, stream or sys.stderr
        self.start_bytes, self.t0, self.last = start, time.monotonic(), 0.0
        self.tty = getattr(self.stream, 'isatty', lambda: False)()
        size = f'{total / 1e6:.1f} MB' if total else 'unknown size'
        resumed = f', resuming at {start / 1e6:.1f} MB' if start else ''
        print(f'Fetching {url} ({size}{resumed})', file=self.stream, flush=True)

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= (0.2 if self.tty else 2.0):
            self.last = now
            self._show(end='\r' if self.tty else '\n')

    def close(self) -> None:
        self._show(end='\n')

    def _show(self, end: str) -> None:
        elapsed = max(time.monotonic() - self.t0, 1e-6)
        speed = (self.done - self.start_bytes) / elapsed / 1e6
        pct = f'{100 * self.done / self.total:5.1f}% ' if self.total else ''
        total = f'/{self.total / 1e6:.1f}' if self.total else ''
        print(f'  {pct}{self.done / 1e6:.1f}{total} MB  {speed:.1f} MB/s', end=end,
              file=self.stream, flush=True)


def _download(url: str, part: str, timeout: float, opener: urllib.request.OpenerDirector,
              progress: Callable[..., _Progress]) -> None:
    """Stream ``url`` into ``part``, continuing a partial file with a Range request."""
    have = osp.getsize(part) if osp.isfile(part) else 0
    request = urllib.request.Request(url, headers={'User-Agent': 'tagclip_mmseg'})
    if have:
        request.add_header('Range', f'bytes={have}-')
    with opener.open(request, timeout=timeout) as response:
        if have and response.status != 206:
            have = 0  # the server ignored the Range header: start over
        length = response.headers.get('Content-Length')
        total = int(length) + have if length is not None else None
        bar = progress(url, total, have)
        with open(part, 'ab' if have else 'wb') as f:
            for chunk in iter(lambda: response.read(_CHUNK), b''):
                f.write(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        bar.close()
    if total is not None and osp.getsize(part) != total:
        raise urllib.error.URLError(f'connection closed at {osp.getsize(part)} of {total} bytes')


def fetch(url: str,
          target: str,
          sha256: Optional[str] = None,
          name: Optional[str] = None,
          retries: int = 4,
          timeout: float = 30.0,
          backoff: float = 2.0) -> str:
    """Make ``target`` a verified copy of ``url``, fetching it at most once per machine.

    A process that must fetch holds ``target + '.lock'``; others wait on it and
    then find the finished file. Data streams into ``target + '.part'``, which
    a later try continues with an HTTP Range request, and is renamed onto
    ``target`` only once its hash matches.

    Args:
        url (str): ``http(s)`` URL.
        target (str): Local file to produce.
        sha256 (str, optional): Expected hex digest; None fetches unverified,
            with a warning.
        name (str, optional): Model name, for messages.
        retries (int): Tries after the first failed one.
        timeout (float): Seconds a connection may stay silent.
        backoff (float): Seconds before the first retry; doubles each time.

    Returns:
        str: ``target``.

    Raises:
        FetchError: Offline, unreachable after every try, or a hash mismatch.
    """
    target = osp.abspath(osp.expanduser(target))
    if osp.isfile(target) and (sha256 is None or file_sha256(target) == sha256):
        return target
    if is_offline():
        raise FetchError(f'{target} is missing and {"/".join(OFFLINE_ENVS)} forbids '
                         f'connections. {_place_by_hand(url, target, name)}')
    os.makedirs(osp.dirname(target), exist_ok=True)
    with FileLock(target + '.lock'):
        if osp.isfile(target):
            if sha256 is None or file_sha256(target) == sha256:
                return target  # another process fetched it while we waited
            warnings.warn(f'{target} does not match the SHA-256 {sha256} of {url} '
                          '(truncated or replaced?); fetching it again')
        if sha256 is None:
            warnings.warn(f'{url} names no SHA-256 (no 64-hex path segment, no #sha256= '
                          'fragment); the fetched file cannot be verified')
        _fetch_verified(url, target, sha256, name, retries, timeout, backoff)
    return target


def _fetch_verified(url: str, target: str, sha256: Optional[str], name: Optional[str],
                    retries: int, timeout: float, backoff: float) -> None:
    part = target + '.part'
    opener = urllib.request.build_opener(_SafeRedirects)  # ProxyHandler reads *_proxy
    fetch_url = url.split('#', 1)[0]
    for attempt in range(retries + 1):
        try:
            _download(fetch_url, part, timeout, opener, _Progress)
            break
        except FetchError:
            raise
        except urllib.error.HTTPError as e:
            if e.code == 416:  # the partial file is already complete (or stale)
                break
            if 300 <= e.code < 400:  # urllib's own refusal of a non-http(s) redirect
                raise FetchError(f'refused a redirect from {fetch_url}: {e.reason}. Only '
                                 'http(s) is followed, and never from https to http') from None
            if e.code < 500 and e.code != 429:
                raise FetchError(f'{fetch_url} answered HTTP {e.code} {e.reason}. '
                                 f'{_place_by_hand(url, target, name)}') from None
            error: Exception = e
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            if isinstance(getattr(e, 'reason', None), socket.gaierror):
                raise FetchError(f'cannot resolve the host of {fetch_url} ({e.reason}). '
                                 f'{_place_by_hand(url, target, name)}') from None
            error = e
        if attempt == retries:
            raise FetchError(f'could not fetch {fetch_url} into {target} after {retries + 1} '
                             f'tries: {error}. {_place_by_hand(url, target, name)}') from None
        wait = backoff * 2**attempt
        print(f'Fetching {fetch_url} failed ({error}); retrying in {wait:g} s',
              file=sys.stderr, flush=True)
        time.sleep(wait)
    actual = file_sha256(part, use_cache=False)
    if sha256 is not None and actual != sha256:
        os.remove(part)
        raise FetchError(f'{fetch_url} fetched into {target} has SHA-256 {actual}, expected '
                         f'{sha256}; the file was deleted. Check the URL or mirror.')
    os.replace(part, target)
    remember_sha256(target, actual)  # the fingerprint of the weights reuses it


def resolve_checkpoint(spec: str, default_path: Optional[str] = None) -> str:
    """Turn a checkpoint argument into a local path, fetching it when needed.

    Args:
        spec (str): Local path, OpenAI model name (``'ViT-B/16'``) or URL.
        default_path (str, optional): The configs' default path: when ``spec``
            is that path and the file is missing, it stands for
            :data:`DEFAULT_CLIP_NAME`, fetched into that very file.

    Returns:
        str: An absolute local path (a missing local file is returned as is,
        for the loader's message).
    """
    spec = os.fspath(spec)
    if spec in OPENAI_CLIP_URLS or is_url(spec):
        url, target = fetch_target(spec)
        name = spec if spec in OPENAI_CLIP_URLS else None
        return fetch(url, target, expected_sha256(url), name=name)
    path = osp.abspath(osp.expanduser(spec))
    if (default_path is not None and not osp.exists(path)
            and path == osp.abspath(osp.expanduser(default_path))):
        url, target = fetch_target(DEFAULT_CLIP_NAME)
        if target == path:
            return fetch(url, target, expected_sha256(url), name=DEFAULT_CLIP_NAME)
    return path

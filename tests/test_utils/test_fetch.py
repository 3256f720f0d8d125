"""Fetching CLIP weights by name or URL, against a loopback HTTP server.

Nothing here reaches the internet: every URL points at
:class:`~tagclip_mmseg.testing.http_server.FileServer` on 127.0.0.1, which
serves a tiny random checkpoint and counts the requests it gets.
"""
import hashlib
import os
import os.path as osp
import socket
import urllib.request

import pytest
import torch

from tagclip_mmseg.models.clip.checkpoint import load_clip
from tagclip_mmseg.testing.checkout import repo_root
from tagclip_mmseg.testing.http_server import FileServer
from tagclip_mmseg.utils import fetch as fetch_mod
from tagclip_mmseg.utils.fetch import (OPENAI_CLIP_URLS, FetchError, expected_sha256, fetch,
                                       resolve_checkpoint)

B16_SHA = '5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f'


@pytest.fixture
def online(monkeypatch, tmp_path):
    """Connections allowed, and every cache folder inside ``tmp_path``."""
    for name in fetch_mod.OFFLINE_ENVS + (fetch_mod.MIRROR_ENV, ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    return tmp_path


@pytest.fixture
def ckpt_bytes(tiny_clip_path):
    with open(tiny_clip_path, 'rb') as f:
        return f.read()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hub(tmp_path) -> str:
    return str(tmp_path / 'torch' / 'hub' / 'checkpoints')


def test_expected_sha256_from_fragment_or_path_segment():
    digest = 'ab' * 32
    assert expected_sha256(f'https://h/x/{digest}/f.pt') == digest
    assert expected_sha256(f'https://h/x/f.pt#sha256={digest.upper()}') == digest
    assert expected_sha256(OPENAI_CLIP_URLS['ViT-B/16']) == B16_SHA
    assert expected_sha256('https://h/x/f.pt') is None
    # A 64-hex *file name* is not a hash segment; a bad fragment is refused.
    assert expected_sha256(f'https://h/x/{digest}') is None
    with pytest.raises(ValueError, match='64 hex'):
        expected_sha256('https://h/f.pt#sha256=abc')


def test_first_use_fetches_once_then_reads_the_cache(online, ckpt_bytes, capsys):
    with FileServer({'/w/tiny.pth': ckpt_bytes}) as server:
        url = f'{server.base}/w/tiny.pth#sha256={_sha(ckpt_bytes)}'
        first = load_clip(url)
        second = load_clip(url)
        assert server.count() == 1
    target = osp.join(_hub(online), 'tiny.pth')
    with open(target, 'rb') as f:
        assert f.read() == ckpt_bytes
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    err = capsys.readouterr().err
    assert 'Fetching' in err and 'MB/s' in err


def test_wrong_hash_is_refused_and_nothing_is_left(online, ckpt_bytes):
    wrong = '0' * 64
    with FileServer({'/tiny.pth': ckpt_bytes}) as server:
        with pytest.raises(FetchError) as info:
            resolve_checkpoint(f'{server.base}/tiny.pth#sha256={wrong}')
    message = str(info.value)
    assert f'{server.base}/tiny.pth' in message and wrong in message
    assert _sha(ckpt_bytes) in message
    # Only the lock file may remain: no weights, complete or partial.
    assert [f for f in os.listdir(_hub(online)) if not f.endswith('.lock')] == []


def test_dropped_connection_resumes_with_range(online, ckpt_bytes):
    half = len(ckpt_bytes) // 3
    with FileServer({'/tiny.pth': ckpt_bytes}, drop_after=half) as server:
        path = fetch(f'{server.base}/tiny.pth', osp.join(_hub(online), 'tiny.pth'),
                     _sha(ckpt_bytes), backoff=0.01)
        ranges = [r['range'] for r in server.requests]
    assert ranges == [None, f'bytes={half}-']
    with open(path, 'rb') as f:
        assert f.read() == ckpt_bytes


def test_a_server_without_range_support_restarts_cleanly(online, ckpt_bytes):
    with FileServer({'/tiny.pth': ckpt_bytes}, drop_after=100, ranges=False) as server:
        path = fetch(f'{server.base}/tiny.pth', osp.join(_hub(online), 'tiny.pth'),
                     _sha(ckpt_bytes), backoff=0.01)
        assert server.count() == 2
    with open(path, 'rb') as f:
        assert f.read() == ckpt_bytes


def test_404_and_refused_connection_give_clear_errors(online, ckpt_bytes):
    with FileServer({}) as server:
        with pytest.raises(FetchError, match='HTTP 404') as info:
            resolve_checkpoint(f'{server.base}/missing.pth')
        assert server.count() == 1  # a client error is final: no retries
    assert 'place it at' in str(info.value) and 'missing.pth' in str(info.value)
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    url = f'http://127.0.0.1:{port}/tiny.pth'
    with pytest.raises(FetchError, match='after 2 tries') as info:
        fetch(url, osp.join(_hub(online), 'tiny.pth'), retries=1, backoff=0.01)
    assert url in str(info.value) and 'place it at' in str(info.value)


@pytest.mark.parametrize('variable', ['TAGCLIP_MMSEG_OFFLINE', 'HF_HUB_OFFLINE'])
def test_offline_opens_no_connection(online, ckpt_bytes, monkeypatch, variable):
    monkeypatch.setenv(variable, '1')
    with FileServer({'/tiny.pth': ckpt_bytes}) as server:
        with pytest.raises(FetchError, match='forbids connections') as info:
            resolve_checkpoint(f'{server.base}/tiny.pth')
        assert server.count() == 0
    assert f'{server.base}/tiny.pth' in str(info.value)


def test_mirror_serves_openai_names_by_hash(online, ckpt_bytes, monkeypatch):
    path = f'/mirror/{B16_SHA}/ViT-B-16.pt'
    with FileServer({path: ckpt_bytes}) as server:
        monkeypatch.setenv(fetch_mod.MIRROR_ENV, f'{server.base}/mirror/')
        with pytest.raises(FetchError, match='expected') as info:
            resolve_checkpoint('ViT-B/16')
        assert [r['path'] for r in server.requests] == [path]
    # The tiny file is not OpenAI's: verification refuses it, by name and hash.
    assert B16_SHA in str(info.value) and _sha(ckpt_bytes) in str(info.value)
    assert not osp.exists(osp.join(online, 'home', '.cache', 'clip', 'ViT-B-16.pt'))


def test_missing_default_path_means_vit_b16_fetched_into_it(online, monkeypatch, ckpt_bytes):
    monkeypatch.setenv(fetch_mod.OFFLINE_ENVS[0], '1')
    with pytest.raises(FetchError) as info:
        load_clip()  # the default ~/.cache/clip/ViT-B-16.pt, absent
    assert OPENAI_CLIP_URLS['ViT-B/16'] in str(info.value)
    assert osp.join(online, 'home', '.cache', 'clip', 'ViT-B-16.pt') in str(info.value)


def test_cached_file_with_wrong_hash_is_fetched_again(online, ckpt_bytes):
    target = osp.join(_hub(online), 'tiny.pth')
    os.makedirs(osp.dirname(target))
    with open(target, 'wb') as f:
        f.write(ckpt_bytes[:1000])  # a truncated copy
    with FileServer({'/tiny.pth': ckpt_bytes}) as server:
        with pytest.warns(UserWarning, match='fetching it again'):
            fetch(f'{server.base}/tiny.pth', target, _sha(ckpt_bytes))
        assert server.count() == 1
    with open(target, 'rb') as f:
        assert f.read() == ckpt_bytes


def test_unverifiable_url_warns(online, ckpt_bytes):
    with FileServer({'/tiny.pth': ckpt_bytes}) as server:
        with pytest.warns(UserWarning, match='cannot be verified'):
            resolve_checkpoint(f'{server.base}/tiny.pth')


def test_redirects_only_to_http_and_never_down_from_https(online, ckpt_bytes):
    with FileServer({'/tiny.pth': ckpt_bytes}, redirects={'/r': 'file:///etc/hostname'}) as s:
        with pytest.raises(FetchError, match='refused a redirect'):
            fetch(f'{s.base}/r', osp.join(_hub(online), 'r.pth'), retries=0)
    handler = fetch_mod._SafeRedirects()
    request = urllib.request.Request('https://example.org/a.pt')
    with pytest.raises(FetchError, match='never from https to http'):
        handler.redirect_request(request, None, 302, 'Found', {}, 'http://example.org/a.pt')


#: A process that loads a CLIP by URL and prints a digest of its weights.
_LOAD_AND_DIGEST = """
import hashlib, sys
from tagclip_mmseg.models.clip.checkpoint import load_clip
digest = hashlib.sha256()
for value in load_clip(sys.argv[1]).state_dict().values():
    digest.update(value.numpy().tobytes())
print('DIGEST', digest.hexdigest())
"""


@pytest.mark.slow
def test_four_processes_at_once_fetch_once(online, ckpt_bytes, tool_runner):
    import subprocess
    import sys
    with FileServer({'/tiny.pth': ckpt_bytes}, delay=2.0) as server:
        url = f'{server.base}/tiny.pth#sha256={_sha(ckpt_bytes)}'
        procs = [
            subprocess.Popen([sys.executable, '-c', _LOAD_AND_DIGEST, url], env=tool_runner.env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        outputs = [p.communicate(timeout=600) for p in procs]
        assert server.count() == 1
    assert all(p.returncode == 0 for p in procs), outputs
    digests = {line for out, _ in outputs for line in out.splitlines() if line.startswith('DIGEST')}
    assert len(digests) == 1
    # The progress bar comes from the one process that fetched.
    assert sum('Fetching' in err for _, err in outputs) == 1


@pytest.mark.slow
def test_demo_fetches_verifies_and_tags(online, tool_runner, tmp_path):
    from tagclip_mmseg.apis import write_pipeline_check_checkpoint

    # The demo's configs index 12 vision layers: serve the narrow 12-layer CLIP.
    with open(write_pipeline_check_checkpoint(str(tmp_path / 'narrow.pth')), 'rb') as f:
        ckpt_bytes = f.read()
    image = osp.join(repo_root(__file__), 'demo', 'images',
                     'skimage_chelsea.png')
    with FileServer({'/w/tiny.pth': ckpt_bytes}) as server:
        url = f'{server.base}/w/tiny.pth#sha256={_sha(ckpt_bytes)}'
        proc = tool_runner.subprocess('demo/image_demo.py', image, '--out-dir',
                                      str(tmp_path / 'out'), '--checkpoint', url, '--classes',
                                      'cat', 'person', '--device', 'cpu')
        assert server.count() == 1
    assert 'Fetching' in proc.stderr and 'PIPELINE CHECK' not in proc.stdout
    assert osp.isfile(tmp_path / 'out' / 'index.html')
    assert osp.isfile(osp.join(_hub(online), 'tiny.pth'))


@pytest.mark.slow
def test_a_url_works_wherever_a_checkpoint_is_accepted(online, tiny_tool_options, tool_runner,
                                                       tmp_path):
    """The inferencer, the converter and ``tools/test.py`` share one fetched copy.

    ``tools/test.py`` gets it through ``--clip-checkpoint``.
    """
    import importlib.util

    import numpy as np
    from PIL import Image

    from tagclip_mmseg.apis import TagCLIPInferencer
    with open(tiny_tool_options['checkpoint'], 'rb') as f:
        data = f.read()
    repo = repo_root(__file__)
    with FileServer({'/tiny.pth': data}) as server:
        url = f'{server.base}/tiny.pth#sha256={_sha(data)}'
        config = dict(model=dict(type='TagCLIP', clip=dict(checkpoint='unused.pt'),
                                 class_names=['cat', 'dog'], background_words=['sky'],
                                 avg_layers=(0, 1), vote_k=2, cwr_crop_size=64,
                                 templates=('a photo of a {}.', )))
        inferencer = TagCLIPInferencer(config, checkpoint=url, device='cpu',
                                       text_cache_dir=str(tmp_path / 'cache'))
        assert set(inferencer(np.zeros((32, 32, 3), np.uint8))[0]['scores']) == {'cat', 'dog'}

        spec = importlib.util.spec_from_file_location(
            'convert_clip_checkpoint', osp.join(repo, 'tools', 'convert_clip_checkpoint.py'))
        convert = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(convert)
        assert convert.main([url, str(tmp_path / 'converted.safetensors')]) == 0

        images = tmp_path / 'photos'
        images.mkdir()
        Image.fromarray(np.full((40, 48, 3), 90, np.uint8)).save(images / 'a.jpg')
        tags = tmp_path / 'tags.txt'
        tool_runner.inprocess(
            'tools/test.py', 'configs/tagclip/tagclip_vit-b16_folder.py', '--work-dir',
            str(tmp_path / 'work'), '--cfg-options', *tiny_tool_options['tag'],
            f'test_dataloader.dataset.data_root={images}', f'test_evaluator.0.out_file={tags}',
            f'test_evaluator.0.scores_file={tags}.scores.jsonl', '--clip-checkpoint', url)
        assert server.count() == 1
    assert tags.read_text().startswith('a')


def test_a_fetched_file_is_hashed_once(online, ckpt_bytes, monkeypatch):
    """Verifying the fetch and fingerprinting the weights share one read."""
    from tagclip_mmseg.utils import hashing
    fed = []  # bytes fed to each SHA-256 object made while loading

    class Counting:

        def __init__(self, *args):
            self._sha = real(*args)
            fed.append(sum(len(a) for a in args))
            self._slot = len(fed) - 1

        def update(self, data):
            fed[self._slot] += len(data)
            self._sha.update(data)

        def hexdigest(self):
            return self._sha.hexdigest()

    real, digest = hashing.hashlib.sha256, _sha(ckpt_bytes)
    monkeypatch.setattr(hashing.hashlib, 'sha256', Counting)
    with FileServer({'/tiny.pth': ckpt_bytes}) as server:
        model = load_clip(f'{server.base}/tiny.pth#sha256={digest}')
    assert sum(n >= len(ckpt_bytes) for n in fed) == 1
    assert model.checkpoint_fingerprint

"""A loopback HTTP server that serves files and counts requests, for fetch tests.

Only ``127.0.0.1`` is ever bound. Behaviours a test may switch on: honour or
ignore ``Range``, drop the connection after N bytes (once), answer slowly,
redirect, or answer 404.
"""
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional

__all__ = ['FileServer']


class FileServer:
    """Serve ``files`` (URL path -> bytes) on a free loopback port.

    Args:
        files (dict): URL path (``'/a/b.pt'``) -> content.
        ranges (bool): Answer ``Range`` requests with 206.
        drop_after (int, optional): Close the first response after this many
            body bytes.
        delay (float): Seconds to wait before each response.
        redirects (dict, optional): URL path -> ``Location`` for a 302.
    """

    def __init__(self,
                 files: Dict[str, bytes],
                 ranges: bool = True,
                 drop_after: Optional[int] = None,
                 delay: float = 0.0,
                 redirects: Optional[Dict[str, str]] = None) -> None:
        self.files, self.ranges, self.drop_after = dict(files), ranges, drop_after
        self.delay, self.redirects = delay, dict(redirects or {})
        self.requests: List[dict] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(('127.0.0.1', 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f'http://127.0.0.1:{self._server.server_address[1]}'

    def count(self, path: Optional[str] = None) -> int:
        """Requests seen, for one path or in all."""
        with self._lock:
            return sum(1 for r in self.requests if path is None or r['path'] == path)

    def __enter__(self) -> 'FileServer':
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802
                with server._lock:
                    server.requests.append(dict(path=self.path, range=self.headers['Range']))
                    drop, server.drop_after = server.drop_after, None
                time.sleep(server.delay)
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header('Location', server.redirects[self.path])
                    self.end_headers()
                    return
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if server.ranges and self.headers['Range']:
                    start = int(self.headers['Range'].split('=')[1].split('-')[0])
                    self.send_response(206)
                    self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
                else:
                    self.send_response(200)
                self.send_header('Content-Length', str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if drop is not None:
                    self.wfile.write(body[:drop])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        return Handler

"""A loopback HTTP server with images and redirects, for URL-fetching tests."""

from __future__ import annotations

import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.helpers import shape_image


def _png() -> bytes:
    buffer = io.BytesIO()
    shape_image("red").save(buffer, format="PNG")
    return buffer.getvalue()


class _Handler(BaseHTTPRequestHandler):
    image = _png()

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/red.png":
            self.send_response(200)
            self.send_header("content-type", "image/png")
            self.send_header("content-length", str(len(self.image)))
            self.end_headers()
            self.wfile.write(self.image)
        elif self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("location", self.path.removeprefix("/redirect?to="))
            self.end_headers()
        elif self.path == "/slow":  # answers after 5 s: longer than the tests' URL timeout
            time.sleep(5)
            self.send_response(200)
            self.end_headers()
        elif self.path == "/big":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"\0" * 300_000)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="session")
def url_server():
    """Base URL of a loopback image server."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()

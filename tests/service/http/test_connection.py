"""Slow and hostile clients against a live server (raw sockets): read timeouts, the header limit and
the connection limit, each answered in the one JSON error shape. Bounds are loose: they catch a
connection held for ever or a starved server, never a slow machine."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time

import httpx
import pytest

from tests.helpers import LiveServer, wait_until

BODY = json.dumps({"items": [{"prompt": "What is two plus two?", "response": "Four."}]}).encode()
TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def server(hf_backend):
    with LiveServer(hf_backend, header_timeout_s=TIMEOUT_S, body_timeout_s=TIMEOUT_S, max_header_bytes=8192) as live:
        yield live


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=60)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def status_and_error(raw: bytes) -> tuple[int, dict, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)["error"]


def open_connections(server) -> int:
    return len(server.server.server_state.connections)


def test_slowloris_bodies_cannot_starve_the_server_and_are_closed_after_the_body_timeout(server):
    head = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    slow = [connect(server) for _ in range(50)]
    for sock in slow:
        sock.sendall(head)
    stop = threading.Event()

    def one_byte_per_second() -> None:  # to each connection until the server answers it
        answered: set[socket.socket] = set()
        while not stop.wait(1.0):
            answered.update(select.select(slow, [], [], 0)[0])
            for sock in set(slow) - answered:
                with contextlib.suppress(OSError):
                    sock.send(b" ")

    sender = threading.Thread(target=one_byte_per_second, daemon=True)
    sender.start()
    try:
        for _ in range(5):  # normal requests are served meanwhile
            reply = httpx.post(
                server.url + "/score", content=BODY, headers={"content-type": "application/json"}, timeout=60
            )
            assert reply.status_code == 200, reply.text
        started = time.monotonic()
        answers = [read_all(sock) for sock in slow]  # each ends with the server closing it
        assert time.monotonic() - started < 60
    finally:
        stop.set()
        sender.join()
        for sock in slow:
            sock.close()
    for raw in answers:
        status, headers, error = status_and_error(raw)
        assert status == 408 and error["type"] == "read_timeout" and headers["connection"] == "close"
    assert server.metric("vlreward_rejected_total", reason="read_timeout") >= 50
    wait_until(lambda: open_connections(server) == 0, what="the slow connections closed")


def test_slow_headers_and_a_silent_connection_are_closed_after_the_header_timeout(server):
    silent, slow = connect(server), connect(server)
    slow.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\n")  # and then nothing
    for sock in (silent, slow):
        status, _, error = status_and_error(read_all(sock))
        assert status == 408 and error["type"] == "read_timeout" and "headers" in error["message"]
        sock.close()


def test_headers_over_the_limit_are_431_in_the_json_shape(server):
    sock = connect(server)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    status, _, error = status_and_error(read_all(sock))
    assert status == 431 and error["type"] == "headers_too_large"
    sock.close()
    assert httpx.get(server.url + "/health", headers={"x-fine": "a" * 4000}).status_code == 200


def test_connections_over_the_limit_get_a_json_429_with_retry_after(hf_backend):
    with LiveServer(hf_backend, max_connections=4, header_timeout_s=60) as live:
        idle = [connect(live) for _ in range(5)]
        wait_until(lambda: open_connections(live) == 5, what="five connections open")
        refused = httpx.get(live.url + "/health")
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "overloaded"
        assert refused.headers["retry-after"] == "1" and refused.headers["connection"] == "close"
        refused_connections = live.state.metrics.rejected.labels(reason="connections", model="")
        assert refused_connections._value.get() == 1  # read in process: /metrics would get a 429 too
        for sock in idle:
            sock.close()
        wait_until(lambda: open_connections(live) == 0, what="the idle connections closed")
        assert httpx.get(live.url + "/health").status_code == 200

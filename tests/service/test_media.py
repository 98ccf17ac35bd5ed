"""Image references: decoding, formats, caps checked before decoding, and path confinement."""

from __future__ import annotations

import base64
import io
import socket
import struct
import zlib

import pytest
from PIL import Image

from tests.helpers import shape_image, uri
from vlreward.service.errors import ErrorKind, Overloaded
from vlreward.service.media import ImageMemory, MediaError, MediaPolicy, load_image

SMALL = uri(shape_image(size=(84, 84)))
"""An 84 x 84 PNG data URI (made before any test patches decoding)."""


@pytest.fixture()
def no_decoding(monkeypatch):
    """Fail the test if any image's pixels are decoded (refusals must come from the header alone)."""

    def load(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(Image.Image, "load", load)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A small PNG whose header claims width x height pixels (the pixel data is never there)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_data_uri_and_bare_base64_decode_to_the_same_pixels():
    image = shape_image("green")
    raw = _png_bytes(image)
    from_uri = load_image(uri(image), MediaPolicy())
    from_b64 = load_image(base64.b64encode(raw).decode(), MediaPolicy())
    assert from_uri.tobytes() == from_b64.tobytes() == image.tobytes()


def test_malformed_base64_is_a_400():
    with pytest.raises(MediaError) as error:
        load_image("data:image/png;base64,@@@not-base64@@@", MediaPolicy())
    assert error.value.kind is ErrorKind.INVALID_REQUEST and "base64" in error.value.message
    with pytest.raises(MediaError, match="data URI must be of the form"):  # not base64-encoded, or no comma
        load_image("data:image/png,rawbytes", MediaPolicy())
    with pytest.raises(MediaError, match="data URI must be of the form"):
        load_image("data:image/png;base64", MediaPolicy())


def test_truncated_png_is_a_400():
    raw = _png_bytes(shape_image())
    with pytest.raises(MediaError) as error:
        load_image(base64.b64encode(raw[: len(raw) // 2]).decode(), MediaPolicy())
    assert error.value.kind is ErrorKind.INVALID_REQUEST


def test_decompression_bomb_is_refused_from_its_header_without_decoding(no_decoding):
    with pytest.raises(MediaError) as error:
        load_image(base64.b64encode(bomb_png()).decode(), MediaPolicy())
    assert error.value.kind is ErrorKind.TOO_LARGE


def test_the_services_own_pixel_cap_refuses_below_pillows_bomb_limit(no_decoding):
    # 8000 x 8000 = 64 M pixels: under Pillow's DecompressionBombError (179 M), over our 40 M default
    with pytest.raises(MediaError, match="8000x8000 = 64000000 pixels; the limit is 40000000") as error:
        load_image(base64.b64encode(bomb_png(8000, 8000)).decode(), MediaPolicy())
    assert error.value.kind is ErrorKind.TOO_LARGE
    with pytest.raises(MediaError, match="the limit is 7000"):  # and it is the setting that decides
        load_image(SMALL, MediaPolicy(max_image_pixels=7000))


def test_an_image_exactly_at_the_caps_is_accepted():
    raw = base64.b64decode(SMALL.split(",")[1])
    assert load_image(SMALL, MediaPolicy(max_image_pixels=84 * 84, max_image_bytes=len(raw))).size == (84, 84)
    with pytest.raises(MediaError, match="bytes; the limit"):
        load_image(SMALL, MediaPolicy(max_image_bytes=len(raw) - 1))


def test_decoded_image_memory_is_bounded_per_request_and_in_total():
    memory = ImageMemory(per_request=3 * 84 * 84, total=4 * 84 * 84)
    image = SMALL
    with memory.request() as first:
        policy = MediaPolicy().counting(first)
        for _ in range(3):
            load_image(image, policy)
        with pytest.raises(MediaError, match="decoded pixels") as error:  # a fourth is over its share: 413
            load_image(image, policy)
        assert error.value.kind is ErrorKind.TOO_LARGE
        with memory.request() as second:
            load_image(image, MediaPolicy().counting(second))  # the last share of the total
            with pytest.raises(Overloaded):  # the total is in use: 429 for whoever asks now
                load_image(image, MediaPolicy().counting(second))
        assert memory.in_use == 3 * 84 * 84
    assert memory.in_use == 0  # given back when each request ends


def test_unsupported_format_is_a_415():
    buffer = io.BytesIO()
    shape_image().save(buffer, format="TIFF")
    with pytest.raises(MediaError) as error:
        load_image(base64.b64encode(buffer.getvalue()).decode(), MediaPolicy())
    assert error.value.kind is ErrorKind.UNSUPPORTED_MEDIA


def test_byte_cap_is_a_413():
    with pytest.raises(MediaError) as error:
        load_image(uri(shape_image()), MediaPolicy(max_image_bytes=100))
    assert error.value.kind is ErrorKind.TOO_LARGE


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "GIF", "BMP"])
def test_other_allowed_formats_decode_to_rgb(fmt):
    buffer = io.BytesIO()
    shape_image().save(buffer, format=fmt)
    image = load_image(base64.b64encode(buffer.getvalue()).decode(), MediaPolicy())
    assert image.mode == "RGB" and image.size == (84, 84)


def test_file_paths_are_off_by_default_and_confined_to_the_media_root(tmp_path):
    shape_image().save(tmp_path / "a.png")
    with pytest.raises(MediaError, match="disabled"):
        load_image(str(tmp_path / "a.png"), MediaPolicy())
    root = tmp_path / "root"
    root.mkdir()
    shape_image().save(root / "b.png")
    policy = MediaPolicy(media_root=root)
    assert load_image("./b.png", policy).size == (84, 84)
    assert load_image(f"file://{root / 'b.png'}", policy).size == (84, 84)
    for outside in ["./../a.png", str(tmp_path / "a.png"), "file:///etc/passwd"]:
        with pytest.raises(MediaError, match="outside the media root"):
            load_image(outside, policy)


def test_urls_are_refused_when_disabled():
    with pytest.raises(MediaError, match="disabled"):
        load_image("https://example.com/a.png", MediaPolicy())


def url_policy(**overrides) -> MediaPolicy:
    return MediaPolicy(allow_urls=True, url_allow_private=True, **overrides)


def test_url_is_fetched_from_an_allowed_host(url_server):
    image = load_image(url_server + "/red.png", url_policy(url_hosts=frozenset({"127.0.0.1"})))
    assert image.tobytes() == shape_image("red").tobytes()


def test_url_to_a_host_outside_the_allow_list_is_refused(url_server):
    with pytest.raises(MediaError, match="allow-list"):
        load_image(url_server + "/red.png", url_policy(url_hosts=frozenset({"images.example.com"})))


def test_redirects_are_checked_again(url_server):
    port = url_server.rsplit(":", 1)[1]
    policy = url_policy(url_hosts=frozenset({"127.0.0.1"}))
    assert load_image(f"{url_server}/redirect?to=/red.png", policy).size == (84, 84)
    with pytest.raises(MediaError, match="allow-list"):
        load_image(f"{url_server}/redirect?to=http://localhost:{port}/red.png", policy)


def test_redirect_to_a_private_address_is_refused_when_private_is_not_allowed(url_server, monkeypatch):
    # The first hop is allowed through a private-address exemption for this loopback server only;
    # the redirect target (the metadata address) must be refused before any connection.
    import vlreward.service.media as media

    real = media.resolve_public_address
    calls = []

    def first_hop_exempt(host, port, policy):
        calls.append(host)
        if len(calls) == 1:
            return real(host, port, MediaPolicy(url_allow_private=True))
        return real(host, port, policy)

    monkeypatch.setattr(media, "resolve_public_address", first_hop_exempt)
    with pytest.raises(MediaError, match="non-public"):
        load_image(f"{url_server}/redirect?to=http://169.254.169.254/latest", MediaPolicy(allow_urls=True))
    assert calls == ["127.0.0.1", "169.254.169.254"]


def test_the_connection_goes_to_the_checked_address_not_a_second_dns_answer(url_server, monkeypatch):
    """DNS rebinding: the host is checked once and the connection pinned to that address; a second
    lookup (which would answer an unreachable address here) never happens."""
    port = int(url_server.rsplit(":", 1)[1])
    real, lookups = socket.getaddrinfo, []

    def rebinding_dns(host, *args, **kwargs):
        if host == "images.rebind.test":
            lookups.append(host)
            address = "127.0.0.1" if len(lookups) == 1 else "203.0.113.7"  # then a TEST-NET address
            return real(address, *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_dns)
    policy = url_policy(url_hosts=frozenset({"rebind.test"}), url_timeout_s=3)
    image = load_image(f"http://images.rebind.test:{port}/red.png", policy)
    assert image.tobytes() == shape_image("red").tobytes() and lookups == ["images.rebind.test"]


def test_the_fetch_ignores_proxy_settings_in_the_environment(url_server, monkeypatch):
    """A proxy would connect to the host name itself, not the address that was checked."""
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert load_image(url_server + "/red.png", url_policy()).size == (84, 84)


def test_a_host_that_does_not_resolve_and_a_url_that_is_not_200_are_400s(url_server):
    with pytest.raises(MediaError, match="does not resolve"):
        load_image("http://no-such-host.invalid/a.png", url_policy())
    with pytest.raises(MediaError, match="answered HTTP 404"):
        load_image(url_server + "/missing.png", url_policy())


def test_a_slow_url_times_out(url_server):
    with pytest.raises(MediaError, match="timed out"):
        load_image(url_server + "/slow", url_policy(url_timeout_s=0.5))


def test_redirects_beyond_the_limit_are_refused(url_server):
    two_hops = "/redirect?to=/redirect?to=/red.png"
    assert load_image(url_server + "/redirect?to=/red.png", url_policy(max_redirects=1)).size == (84, 84)
    assert load_image(url_server + two_hops, url_policy(max_redirects=2)).size == (84, 84)
    with pytest.raises(MediaError, match="redirected more than 1 times"):
        load_image(url_server + two_hops, url_policy(max_redirects=1))


def test_url_download_over_the_byte_cap_is_413(url_server):
    with pytest.raises(MediaError) as error:
        load_image(url_server + "/big", url_policy(max_image_bytes=100_000))
    assert error.value.kind is ErrorKind.TOO_LARGE

"""Image references -> decoded, size-checked RGB images.

A reference is a data URI, an http(s) URL (when enabled), a file path (``file://``, ``/`` or ``./``;
only under the media root) or bare base64. Images are checked against byte and pixel caps before
their pixels are decoded, so a decompression bomb is refused from its header alone.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import re
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vlreward.service.errors import ErrorKind, Overloaded, ServiceError
from vlreward.service.settings import Settings, default

# Bare base64 of a JPEG starts with "/9j/": a "/"-string made only of base64 characters is base64,
# anything else starting with "/" (a "." or "-" in a file name, say) is a path. `file://` is explicit.
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/=\s]+")

# The formats we decode; anything else is 415.
ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP"})


class MediaError(ServiceError):
    """A client's image could not be used: undecodable or refused (invalid_request), too large, or in an
    unsupported format."""


class ImageMemory:
    """Decoded-image memory, counted in pixels (an RGB pixel is 3 bytes) from each image's header before
    it is decoded: at most ``per_request`` for one request (413 above) and ``total`` over every request in
    flight (429 when full, so that many concurrent large-image requests wait instead of exhausting
    memory). A request holds what it decoded until it is answered (the vLLM backend keeps the images
    until the engine has scored them)."""

    def __init__(self, per_request: int, total: int):
        self.per_request = per_request
        self.total = total
        self.in_use = 0
        self._lock = threading.Lock()  # requests are prepared in worker threads too

    @contextmanager
    def request(self) -> Iterator[RequestImages]:
        """One request's account; everything it charged is given back when the block ends."""
        account = RequestImages(self)
        try:
            yield account
        finally:
            with self._lock:
                self.in_use -= account.pixels

    def _take(self, pixels: int) -> None:
        with self._lock:
            if self.in_use + pixels > self.total:
                raise ImageMemoryFull(self.total)
            self.in_use += pixels


class ImageMemoryFull(Overloaded):
    """The decoded images of the requests in flight are at the service's limit: 429, retry later."""

    def __init__(self, total: int):
        super().__init__(f"server busy: decoded images in flight are at their limit ({total} pixels)")


class RequestImages:
    """The decoded-image pixels of one request (see :class:`ImageMemory`)."""

    def __init__(self, memory: ImageMemory):
        self.memory = memory
        self.pixels = 0

    def charge(self, pixels: int) -> None:
        """Count an image about to be decoded, or refuse it: 413 over the request's share, 429 when the
        service's total is in use."""
        if self.pixels + pixels > self.memory.per_request:
            raise MediaError(
                f"the request's images come to more than {self.memory.per_request} decoded pixels (its limit)",
                kind=ErrorKind.TOO_LARGE,
            )
        self.memory._take(pixels)
        self.pixels += pixels


@dataclass(frozen=True)
class MediaPolicy:
    """What image references are accepted and how large they may be."""

    max_image_bytes: int = default("max_image_bytes")
    """Largest encoded image, in bytes."""
    max_image_pixels: int = default("max_image_pixels")
    """Largest width*height, checked from the header before decoding."""
    media_root: Path | None = None
    """Folder that file references must lie under; None disables file references."""
    allow_urls: bool = False
    """Whether http(s) references are fetched."""
    url_hosts: frozenset[str] = frozenset()
    """Host names URLs may point to (and their subdomains); empty allows any public host."""
    url_allow_private: bool = False
    """Allow private, loopback and link-local addresses (tests with a loopback server only)."""
    url_timeout_s: float = default("url_timeout_s")
    """Timeout of one download, redirects included."""
    max_redirects: int = default("url_max_redirects")
    images: RequestImages | None = None
    """The request's decoded-image account (None: not counted; offline tools)."""

    def counting(self, images: RequestImages) -> MediaPolicy:
        """This policy for one request, charging the images it decodes to ``images``."""
        return replace(self, images=images)

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaPolicy:
        """The service's policy: its size caps and media sources."""
        return cls(
            max_image_bytes=settings.max_image_bytes,
            max_image_pixels=settings.max_image_pixels,
            media_root=settings.media_root,
            allow_urls=settings.allow_urls,
            url_hosts=settings.url_hosts(),
            url_allow_private=settings.url_allow_private,
            url_timeout_s=settings.url_timeout_s,
            max_redirects=settings.url_max_redirects,
        )


def _decode_base64(data: str) -> bytes:
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MediaError(f"image is not valid base64: {exc}") from exc


def read_image_bytes(ref: str, policy: MediaPolicy) -> bytes:
    """Fetch the encoded bytes an image reference points to."""
    if ref.startswith("data:"):
        header, sep, payload = ref.partition(",")
        if not sep or ";base64" not in header:
            raise MediaError("data URI must be of the form data:image/<type>;base64,<data>")
        raw = _decode_base64(payload)
    elif ref.startswith(("http://", "https://")):
        if not policy.allow_urls:
            raise MediaError("image URLs are disabled on this server (send a data URI or base64)")
        return fetch_url(ref, policy)
    elif ref.startswith(("file://", "./")) or (ref.startswith("/") and not _BASE64_TEXT.fullmatch(ref)):
        raw = _read_file(ref.removeprefix("file://"), policy)
    else:
        raw = _decode_base64(ref)
    if len(raw) > policy.max_image_bytes:
        raise MediaError(f"image is {len(raw)} bytes; the limit is {policy.max_image_bytes}", kind=ErrorKind.TOO_LARGE)
    return raw


def _read_file(path_text: str, policy: MediaPolicy) -> bytes:
    if policy.media_root is None:
        raise MediaError("file paths are disabled on this server (send a data URI or base64)")
    root = policy.media_root.resolve()
    path = Path(path_text)
    path = (path if path.is_absolute() else root / path).resolve()
    if not path.is_relative_to(root):
        raise MediaError("image path is outside the media root")
    if not path.is_file():
        raise MediaError(f"image file not found: {path_text}")
    size = path.stat().st_size
    if size > policy.max_image_bytes:
        raise MediaError(f"image is {size} bytes; the limit is {policy.max_image_bytes}", kind=ErrorKind.TOO_LARGE)
    return path.read_bytes()


def decode_image(raw: bytes, policy: MediaPolicy) -> Image.Image:
    """Decode image bytes into RGB, refusing unknown formats and oversized images before decoding."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(raw))
        except Image.DecompressionBombError as exc:
            raise MediaError(str(exc), kind=ErrorKind.TOO_LARGE) from exc
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise MediaError("image could not be decoded (not a PNG, JPEG, WEBP, GIF or BMP?)") from exc
        if image.format not in ALLOWED_FORMATS:
            raise MediaError(f"unsupported image format {image.format}", kind=ErrorKind.UNSUPPORTED_MEDIA)
        width, height = image.size
        if width * height > policy.max_image_pixels:
            raise MediaError(
                f"image is {width}x{height} = {width * height} pixels; the limit is {policy.max_image_pixels}",
                kind=ErrorKind.TOO_LARGE,
            )
        if policy.images is not None:
            policy.images.charge(width * height)
        try:
            image.seek(0)  # GIF: first frame
            image.load()
            return image.convert("RGB")
        except (OSError, ValueError, SyntaxError) as exc:
            raise MediaError(f"image could not be decoded: {exc}") from exc


def load_image(ref: str, policy: MediaPolicy) -> Image.Image:
    """Resolve and decode one image reference."""
    return decode_image(read_image_bytes(ref, policy), policy)


def image_to_data_uri(image: Image.Image) -> str:
    """Encode an image as a PNG data URI (lossless, so it decodes to the same pixels)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _check_host(host: str, policy: MediaPolicy) -> None:
    if policy.url_hosts and not any(host == h or host.endswith("." + h) for h in policy.url_hosts):
        raise MediaError(f"image host {host!r} is not in the allow-list")


def resolve_public_address(host: str, port: int, policy: MediaPolicy) -> str:
    """Resolve a host and refuse private, loopback, link-local, metadata and other non-public addresses."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise MediaError(f"image host {host!r} does not resolve") from exc
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not policy.url_allow_private:
        for address in addresses:
            mapped = getattr(address, "ipv4_mapped", None) or address
            if not mapped.is_global or mapped.is_multicast:
                raise MediaError(f"image URL resolves to a non-public address ({address}); refused")
    return str(addresses[0])


def fetch_url(url: str, policy: MediaPolicy) -> bytes:
    """Download an image over http(s): allow-list, public addresses only (checked after DNS resolution
    and again for every redirect, and the connection is pinned to the checked address), timeout, byte cap."""
    import httpx

    deadline = time.monotonic() + policy.url_timeout_s
    with httpx.Client(follow_redirects=False, trust_env=False) as client:
        for _ in range(policy.max_redirects + 1):
            parsed = httpx.URL(url)
            if parsed.scheme not in ("http", "https") or not parsed.host:
                raise MediaError(f"unsupported image URL {url!r}")
            host = parsed.host.lower()
            _check_host(host, policy)
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            address = resolve_public_address(host, port, policy)
            pinned = parsed.copy_with(host=address)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MediaError("image download timed out")
            headers = {"Host": parsed.netloc.decode()}
            extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
            try:
                with client.stream("GET", pinned, headers=headers, extensions=extensions, timeout=remaining) as reply:
                    if reply.is_redirect:
                        url = str(parsed.join(reply.headers.get("location", "")))
                        continue
                    if reply.status_code != 200:
                        raise MediaError(f"image URL answered HTTP {reply.status_code}")
                    return _read_capped(reply, policy.max_image_bytes)
            except httpx.TimeoutException as exc:
                raise MediaError("image download timed out") from exc
            except httpx.HTTPError as exc:
                raise MediaError(f"image download failed: {exc}") from exc
    raise MediaError(f"image URL redirected more than {policy.max_redirects} times")


def _read_capped(reply, limit: int) -> bytes:
    chunks, total = [], 0
    for chunk in reply.iter_bytes():
        total += len(chunk)
        if total > limit:
            raise MediaError(f"image is over {limit} bytes", kind=ErrorKind.TOO_LARGE)
        chunks.append(chunk)
    return b"".join(chunks)

"""Where `qd-data fetch` gets bitmap files from: Google's bucket, a mirror URL or a folder.

A source holds files named `<category>.npy` in Google's numpy_bitmap layout
(`<base>/<category>.npy`, names URL-encoded: `The%20Eiffel%20Tower.npy`). Each source
answers three questions, so that fetch.py can treat them all alike:

- `probe(category)`: the file's bitmap header and total size, from its first bytes only,
  so a bad file (an HTML error page, a wrong dtype) is refused before anything is written;
- `open(category, start, end, version)`: a stream of bytes [start, end) of the file. An HTTP
  server that ignores Range answers from byte 0; the stream's `start` says where it really
  begins, and its `version` which version of the file it is;
- `list_categories()`: every category the source offers (`--all`).

A `Version` (the HTTP ETag and Last-Modified, or a local file's inode, size and mtime) says
which version of a file bytes belong to, so a download resumed after a kill is never spliced
from two versions: a resumed request carries `If-Range`, and a response of another version
raises `RemoteChanged`.

Network errors worth retrying (timeouts, dropped connections, 5xx, 429) raise
`TransientError`; everything else raises `QDError`. Only the standard library's urllib is used.

`--timeout` bounds a whole transfer, not only each socket read: every HTTP response (status
line, headers and body alike) must bring at least `MIN_BYTES_PER_WINDOW` bytes in every window
of `timeout` seconds, or finish within it (`_PacedReader`); a server that drips bytes fails
with a retryable `TooSlow`, so the bytes already written are kept and the next attempt resumes.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import os
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import BinaryIO

from qd import __version__
from qd.command import BitmapFileError, QDError
from qd.files import open_regular

from .bitmaps import (SUFFIX, BitmapHeader, category_path, category_stems, did_you_mean, parse_bitmap_header,
                      read_bitmap_header)
from .contract import DEFAULT_SOURCE, DEFAULT_TIMEOUT, MIN_FETCH_BYTES_PER_WINDOW, SOURCE_ENV

# A bitmap header is 128 bytes; the probe asks for a little more so that a
# (rare) version 2 header or the start of an error page is seen whole.
PROBE_BYTES = 4096
USER_AGENT = f"quickdraw-edge/{__version__} (qd-data)"
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
MIN_BYTES_PER_WINDOW = MIN_FETCH_BYTES_PER_WINDOW  # the pace every response must keep (qd.data.contract)


class TransientError(QDError):
    """A failure that may go away if the same request is made again."""


class TooSlow(OSError):
    """A response brought fewer than MIN_BYTES_PER_WINDOW bytes in a window of --timeout seconds.

    An OSError, so that every place that turns a failed read into a TransientError does so."""

    def __init__(self, got: int, window: float):
        super().__init__(f"timed out: the server sent {got} byte{'' if got == 1 else 's'} in {window:g} s, "
                         f"less than {MIN_BYTES_PER_WINDOW // 1024} KiB per {window:g} s")


class SourceUnreachable(TransientError):
    """No connection at all (unknown host, connection refused): every category would fail alike."""


class CategoryNotFound(QDError):
    """The source has no file for this category."""


class RemoteChanged(TransientError):
    """The file at the source is not the version the download started with."""


@dataclass(frozen=True)
class Version:
    """Which version of a file: a strong ETag, else Last-Modified (HTTP); a local file's stat."""

    etag: str | None = None
    last_modified: str | None = None

    @property
    def known(self) -> bool:
        return bool(self.etag or self.last_modified)

    @property
    def if_range(self) -> str | None:
        """The If-Range value that makes a server send the rest only of this version."""
        return self.etag or self.last_modified

    def same_as(self, other: "Version") -> bool:
        """True only if both name a version and it is provably the same one."""
        if self.etag and other.etag:
            return self.etag == other.etag
        if self.last_modified and other.last_modified and not (self.etag or other.etag):
            return self.last_modified == other.last_modified
        return False

    def contradicts(self, other: "Version") -> bool:
        """True if `other` names a version that is provably not this one (missing validators do not)."""
        if self.etag and other.etag:
            return self.etag != other.etag
        if self.last_modified and other.last_modified:
            return self.last_modified != other.last_modified
        return False

    def to_dict(self) -> dict:
        return {"etag": self.etag, "last_modified": self.last_modified}

    @classmethod
    def from_dict(cls, d: object) -> "Version":
        if not isinstance(d, dict):
            return cls()
        etag, modified = d.get("etag"), d.get("last_modified")
        return cls(etag if isinstance(etag, str) else None, modified if isinstance(modified, str) else None)

    @classmethod
    def from_headers(cls, headers) -> "Version":
        etag = (headers.get("ETag") or "").strip()
        modified = (headers.get("Last-Modified") or "").strip()
        # A weak ETag (W/"...") may name the same version for different bytes: useless for Range.
        return cls(etag if etag and not etag.startswith("W/") else None, modified or None)

    @classmethod
    def of_file(cls, path: Path) -> "Version":
        st = path.stat()
        return cls(etag=f"file:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")


@dataclass(frozen=True)
class Remote:
    """What a probe learnt about one category's file."""

    header: BitmapHeader
    header_bytes: bytes  # the file's first `header.data_offset` bytes, exactly
    size: int  # total file size in bytes (from the header when the server does not say)
    version: Version = Version()


class Body:
    """Bytes of one file from offset `start`, at most `length` of them, of `version`."""

    def __init__(self, stream: BinaryIO, start: int, length: int, label: str, version: Version = Version()):
        self._stream = stream
        self.start = start
        self.length = length
        self._left = length
        self._label = label
        self.version = version

    def read(self, n: int) -> bytes:
        """Up to `n` bytes; an HTTP response gives what one socket read brings (read1), so that
        every byte that arrived is written before a failure, and a slow server is seen at once."""
        if self._left <= 0:
            return b""
        read = self._stream.read1 if isinstance(self._stream, http.client.HTTPResponse) else self._stream.read
        try:
            chunk = read(min(n, self._left))
        except http.client.IncompleteRead as exc:
            chunk = exc.partial  # keep what did arrive; the caller sees the short count
        except TooSlow as exc:
            raise TransientError(f"{self._label}: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise TransientError(f"{self._label}: connection failed mid-file ({_reason(exc)})") from None
        self._left -= len(chunk)
        return chunk

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> "Body":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def google_categories() -> list[str]:
    """Google's 345 category names (googlecreativelab/quickdraw-dataset categories.txt)."""
    text = resources.files(__package__).joinpath("google_categories.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def is_url(value: str) -> bool:
    return urllib.parse.urlsplit(value).scheme in ("http", "https")


def resolve_source(value: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> "FolderSource | UrlSource":
    """`--source` value, else $QD_DATA_SOURCE, else Google's bucket."""
    value = (value or os.environ.get(SOURCE_ENV) or DEFAULT_SOURCE).strip()
    if is_url(value):
        return UrlSource(value, timeout=timeout)
    if value.startswith("file://"):
        value = urllib.request.url2pathname(urllib.parse.urlsplit(value).path)
    path = Path(value).expanduser()
    if path.is_dir():
        return FolderSource(path)
    if path.exists():
        raise QDError(f"{value}: source is a file, expected a folder of <category>.npy files or an http(s) URL")
    raise QDError(f"{value}: source is neither an http(s) URL nor an existing folder")


class FolderSource:
    """A local folder in Google's layout; bytes are copied, never linked."""

    kind = "folder"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __str__(self) -> str:
        return str(self.root)

    def location(self, category: str) -> str:
        return str(category_path(self.root, category))

    def list_categories(self) -> list[str]:
        return category_stems(self.root)  # each name is checked when fetched: one line per bad one

    def probe(self, category: str) -> Remote:
        path = category_path(self.root, category)
        if not path.exists():  # present but not a regular file (a FIFO): read_bitmap_header says so
            hint = did_you_mean(category, self.list_categories())
            raise CategoryNotFound(f"{category}: no {path.name} in {self.root}{hint}")
        try:
            header = read_bitmap_header(path)
            with open_regular(path) as f:
                header_bytes = f.read(header.data_offset)
            version = Version.of_file(path)
        except BitmapFileError as exc:
            raise QDError(f"{category}: source file {exc}") from None
        except OSError as exc:
            raise QDError(f"{category}: cannot read {path}: {_reason(exc)}") from None
        return Remote(header=header, header_bytes=header_bytes, size=header.file_size, version=version)

    def open(self, category: str, start: int, end: int, version: Version = Version()) -> Body:
        path = category_path(self.root, category)
        try:
            f = open_regular(path)
            current = Version.of_file(path)
        except OSError as exc:
            raise QDError(f"{category}: cannot read {path}: {_reason(exc)}") from None
        if version.contradicts(current):
            f.close()
            raise RemoteChanged(f"{category}: {path} changed since the copy started")
        f.seek(start)
        return Body(f, start=start, length=end - start, label=f"{category}: {path}", version=current)


class UrlSource:
    """An HTTP(S) base URL in Google's layout, read with urllib and Range requests."""

    kind = "url"

    def __init__(self, base: str, timeout: float = DEFAULT_TIMEOUT):
        self.base = base.rstrip("/")
        self.timeout = timeout
        host = urllib.parse.urlsplit(self.base).hostname or ""
        # A loopback mirror (tests, a local cache server) is never sent through a proxy.
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(host) else []
        self._opener = urllib.request.build_opener(*handlers, _PacedHTTPHandler(), _PacedHTTPSHandler())

    def __str__(self) -> str:
        return self.base

    def location(self, category: str) -> str:
        return f"{self.base}/{urllib.parse.quote(category + SUFFIX, safe='')}"

    def list_categories(self) -> list[str]:
        return google_categories()

    def probe(self, category: str) -> Remote:
        url = self.location(category)
        with self._request(category, {"Range": f"bytes=0-{PROBE_BYTES - 1}"}, allow_416=True) as resp:
            if resp is None:  # 416: the file is shorter than the probe; ask for all of it
                return self._probe_whole(category)
            total = _total_size(resp)
            first = _read_upto(resp, PROBE_BYTES, category, url)
            content_type = resp.headers.get("Content-Type", "")
            version = Version.from_headers(resp.headers)
        return self._remote_from_prefix(category, url, first, total, content_type, version)

    def _probe_whole(self, category: str) -> Remote:
        url = self.location(category)
        with self._request(category, {}) as resp:
            total = _total_size(resp)
            first = _read_upto(resp, PROBE_BYTES, category, url)
            content_type = resp.headers.get("Content-Type", "")
            version = Version.from_headers(resp.headers)
        return self._remote_from_prefix(category, url, first, total, content_type, version)

    def _remote_from_prefix(self, category: str, url: str, first: bytes, total: int | None,
                            content_type: str, version: Version) -> Remote:
        try:
            header = parse_bitmap_header(io.BytesIO(first), url)
        except BitmapFileError as exc:
            problem = "" if "bad magic" in exc.problem else f": {exc.problem}"
            raise QDError(f"{category}: {url} is not a bitmap .npy file{problem}"
                          f"{_what_arrived(first, content_type)}") from None
        if total is not None and total != header.file_size:
            raise QDError(f"{category}: {url} is {total} bytes but its header promises "
                          f"{header.file_size} ({header.rows} drawings)")
        return Remote(header=header, header_bytes=first[: header.data_offset], size=header.file_size,
                      version=version)

    def open(self, category: str, start: int, end: int, version: Version = Version()) -> Body:
        """Bytes [start, end) of `version` of the file. With If-Range, a server whose file changed
        sends the new version whole (200); that, or a 206 of another version, raises RemoteChanged."""
        url = self.location(category)
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if start and version.if_range:
            headers["If-Range"] = version.if_range
        resp = self._request(category, headers)
        got_version = Version.from_headers(resp.headers)
        if version.contradicts(got_version):  # a 206 of another version, or the new version whole (200)
            resp.close()
            raise RemoteChanged(f"{category}: {url} changed since the download started "
                                f"(ETag/Last-Modified {version.if_range} -> {got_version.if_range})")
        if resp.status == 206:
            got = _content_range(resp)
            if got is None or got[0] != start:
                resp.close()
                raise QDError(f"{category}: {url} answered Range bytes={start}- with "
                              f"Content-Range {resp.headers.get('Content-Range')!r}")
            begin = start
        else:  # 200: the server ignored Range and sends the file from its first byte
            begin = 0
        length = end - begin
        declared = resp.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) < length:
            resp.close()
            raise QDError(f"{category}: {url} sent Content-Length {declared}, expected at least {length} bytes")
        return Body(resp, start=begin, length=length, label=f"{category}: {url}", version=got_version)

    def _request(self, category: str, headers: dict[str, str], allow_416: bool = False):
        url = self.location(category)
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **headers})
        try:
            return self._opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and allow_416:
                return _NoResponse()
            problem = f"{url}: HTTP {exc.code} {exc.reason}"
            if exc.code in _RETRY_STATUS:
                raise TransientError(f"{category}: {problem}") from None
            if exc.code in (403, 404, 410):
                hint = did_you_mean(category, google_categories()) if category not in google_categories() else ""
                raise CategoryNotFound(f"{category}: {problem}{hint}") from None
            raise QDError(f"{category}: {problem}") from None
        except urllib.error.URLError as exc:
            unreachable = isinstance(exc.reason, (socket.gaierror, ConnectionRefusedError))
            error = SourceUnreachable if unreachable else TransientError
            raise error(f"{category}: {url}: {_reason(exc.reason)}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise TransientError(f"{category}: {url}: {_reason(exc)}") from None


class _PacedReader(io.RawIOBase):
    """A response's socket, read so that the response keeps a pace: at least MIN_BYTES_PER_WINDOW
    bytes in every window of `window` seconds (the --timeout), else TooSlow. One read is one recv,
    waiting at most until the window ends, so a status line, headers or a body dripped a byte at a
    time end there too. Bytes that have already arrived when a window ends are still read (a
    client that was busy is not taken for a slow server)."""

    def __init__(self, sock: socket.socket, raw: io.RawIOBase, window: float):
        self._sock, self._raw, self._window = sock, raw, window  # raw: the SocketIO that owns the socket
        self._end = time.monotonic() + window
        self._got = 0

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._raw.fileno()

    def readinto(self, b) -> int:
        while True:
            now = time.monotonic()
            if now >= self._end and self._got >= MIN_BYTES_PER_WINDOW:
                self._end, self._got = now + self._window, 0  # the pace was kept: a new window
            left = self._end - now
            self._sock.settimeout(left if left > 0 else 0.0)  # past the window: only what already arrived
            try:
                n = self._sock.recv_into(b)
            except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
                if self._got >= MIN_BYTES_PER_WINDOW:
                    continue
                raise TooSlow(self._got, self._window) from None
            self._got += n
            return n

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _PacedResponse(http.client.HTTPResponse):
    """An HTTPResponse whose every read (status line, headers, body) goes through a _PacedReader."""

    def __init__(self, sock, *args, **kwargs):
        super().__init__(sock, *args, **kwargs)
        window = sock.gettimeout()  # the --timeout the connection was made with
        if window:
            self.fp = io.BufferedReader(_PacedReader(sock, self.fp.detach(), window))


class _PacedHTTPConnection(http.client.HTTPConnection):
    response_class = _PacedResponse


class _PacedHTTPSConnection(http.client.HTTPSConnection):
    response_class = _PacedResponse


class _PacedHTTPHandler(urllib.request.HTTPHandler):
    def do_open(self, http_class, req, **kwargs):
        return super().do_open(_PacedHTTPConnection, req, **kwargs)


class _PacedHTTPSHandler(urllib.request.HTTPSHandler):
    def do_open(self, http_class, req, **kwargs):
        return super().do_open(_PacedHTTPSConnection, req, **kwargs)


class _NoResponse:
    """Context manager standing for 'no usable response' (a 416 to the probe)."""

    def __enter__(self):
        return None

    def __exit__(self, *exc) -> None:
        return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _content_range(resp) -> tuple[int, int, int | None] | None:
    """(first, last, total) from `Content-Range: bytes first-last/total` (total None for '*')."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", resp.headers.get("Content-Range", ""))
    if not match:
        return None
    first, last, total = match.groups()
    return int(first), int(last), None if total == "*" else int(total)


def _total_size(resp) -> int | None:
    if resp.status == 206:
        got = _content_range(resp)
        return got[2] if got else None
    declared = resp.headers.get("Content-Length")
    if declared is None or not declared.strip().isdigit():
        return None
    if resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity"):
        return None  # a compressed body's length says nothing about the file
    return int(declared)


def _read_upto(resp, n: int, category: str, url: str) -> bytes:
    chunks, left = [], n
    try:
        while left > 0:
            chunk = resp.read(left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except http.client.IncompleteRead as exc:
        chunks.append(exc.partial)
    except (OSError, http.client.HTTPException) as exc:
        raise TransientError(f"{category}: {url}: {_reason(exc)}") from None
    return b"".join(chunks)


def _what_arrived(first: bytes, content_type: str) -> str:
    head = first[:64].decode("utf-8", "replace")
    head = re.sub(r"\s+", " ", head).strip()
    if sum(ch.isprintable() for ch in head) < 0.9 * len(head):
        head = ""  # binary: quoting it would only garble the error line
    parts = []
    if content_type:
        parts.append(f"server sent {content_type.split(';')[0].strip()}")
    if head:
        parts.append(f"starting {head[:40]!r}")
    elif not first:
        parts.append("empty response")
    else:
        parts.append(f"{len(first)} bytes of binary data")
    return f" ({', '.join(parts)})" if parts else ""


def _reason(exc: object) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

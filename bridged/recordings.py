"""Where call recordings are read from and deleted: Asterisk's stored recordings over ARI, or the folder.

Both sources serve the whole file; byte ranges are cut here (Asterisk 22 ignores ``Range`` on
``GET /recordings/stored/{name}/file``), so seeking behaves the same whichever source is configured.
Recording names come from our own call rows (``bridged-<call id>``), never from a request.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp

from .ari import AriClient
from .ari.errors import AriError, AriNotFound
from .ari.nodes import NodeClients

log = logging.getLogger(__name__)

CHUNK = 64 * 1024

# Asterisk's format names -> what a browser's <audio> understands. wav49 is GSM in a WAV container,
# stored with the extension ".WAV".
CONTENT_TYPES = {
    "wav": "audio/wav",
    "wav49": "audio/wav",
    "WAV": "audio/wav",
    "gsm": "audio/x-gsm",
    "ulaw": "audio/basic",
    "alaw": "audio/x-alaw-basic",
    "sln": "audio/L16;rate=8000",
}
_EXTENSIONS = {"wav49": "WAV"}


def content_type(fmt: str) -> str:
    return CONTENT_TYPES.get(fmt, "application/octet-stream")


class RecordingMissing(Exception):
    """The source has no file for this name."""


class SourceUnavailable(Exception):
    """The source could not be asked (Asterisk down, folder unreadable)."""


# -- HTTP byte ranges (RFC 9110 section 14) ---------------------------------------------------------


class RangeNotSatisfiable(Exception):
    pass


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range asked for, or None to send the whole file.

    A header we do not understand (another unit, several ranges, bad syntax) is ignored, as RFC 9110
    allows; a well-formed range that starts past the end raises RangeNotSatisfiable (416).
    """
    if header is None:
        return None
    match = _RANGE_RE.match(header)
    if match is None:
        return None
    first, last = match[1], match[2]
    if first == "" and last == "":
        return None
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable()
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid range-spec: ignore the header
    if start >= size:
        raise RangeNotSatisfiable()
    end = int(last) if last else size - 1
    return ByteRange(start, min(end, size - 1))


# -- sources ----------------------------------------------------------------------------------------


class OpenRecording(Protocol):
    size: int
    content_type: str

    def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes start..end (inclusive)."""
        ...

    async def close(self) -> None: ...


class RecordingSource(Protocol):
    name: str

    async def open(self, recording_name: str) -> OpenRecording: ...

    async def delete(self, recording_name: str) -> bool:
        """True if something was deleted, False if it was already gone."""
        ...


class _AriRecording:
    def __init__(self, resp: aiohttp.ClientResponse, size: int, fmt: str, body: bytes | None) -> None:
        self._resp = resp
        self.size = size
        self.content_type = content_type(fmt)
        self._body = body

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        if self._body is not None:
            for offset in range(start, end + 1, CHUNK):
                yield self._body[offset : min(offset + CHUNK, end + 1)]
            return
        position = 0
        async for chunk in self._resp.content.iter_chunked(CHUNK):
            chunk_end = position + len(chunk)  # exclusive
            if chunk_end > start:
                yield chunk[max(0, start - position) : min(len(chunk), end + 1 - position)]
            position = chunk_end
            if position > end:
                break

    async def close(self) -> None:
        self._resp.release()


class AriRecordings:
    """Asterisk's stored recordings (``/recordings/stored``): works with Asterisk on another host. With
    several nodes, each is asked in turn: a call's recording is on the node it ran on."""

    name = "ari"

    def __init__(self, ari: AriClient) -> None:
        self._nodes = list(ari.clients.values()) if isinstance(ari, NodeClients) else [ari]

    async def open(self, recording_name: str) -> OpenRecording:
        unavailable: SourceUnavailable | None = None
        for ari in self._nodes:
            try:
                return await self._open_on(ari, recording_name)
            except RecordingMissing:
                continue
            except SourceUnavailable as exc:  # perhaps the node that has it: missing is not known
                unavailable = exc
        if unavailable is not None:
            raise unavailable
        raise RecordingMissing(recording_name)

    async def _open_on(self, ari: AriClient, recording_name: str) -> OpenRecording:
        try:
            info = await ari.get_stored_recording(recording_name)
            if info is None:
                raise RecordingMissing(recording_name)
            resp = await ari.stored_recording_file(recording_name)
        except AriNotFound:
            raise RecordingMissing(recording_name) from None
        except AriError as exc:
            raise SourceUnavailable(str(exc)) from None
        fmt = str(info.get("format") or "")
        if resp.content_length is not None:
            return _AriRecording(resp, resp.content_length, fmt, None)
        # No length (chunked): read it all, ranges need the size. Recordings are small (16 kB/s of wav).
        try:
            body = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            resp.release()
            raise SourceUnavailable(type(exc).__name__) from None
        return _AriRecording(resp, len(body), fmt, body)

    async def delete(self, recording_name: str) -> bool:
        deleted = False
        unavailable: SourceUnavailable | None = None
        for ari in self._nodes:
            try:
                deleted = await ari.delete_stored_recording(recording_name) or deleted
            except AriError as exc:
                unavailable = SourceUnavailable(str(exc))
        if unavailable is not None and not deleted:
            raise unavailable
        return deleted


class _FileRecording:
    def __init__(self, handle: object, size: int, fmt: str) -> None:
        self._handle = handle
        self.size = size
        self.content_type = content_type(fmt)

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        handle = self._handle
        await asyncio.to_thread(handle.seek, start)  # type: ignore[attr-defined]
        remaining = end - start + 1
        while remaining > 0:
            chunk = await asyncio.to_thread(handle.read, min(CHUNK, remaining))  # type: ignore[attr-defined]
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk

    async def close(self) -> None:
        await asyncio.to_thread(self._handle.close)  # type: ignore[attr-defined]


class FolderRecordings:
    """``<folder>/<name>.<ext>``, for bridged running beside Asterisk (its ``<astspooldir>/recording``)."""

    name = "folder"

    def __init__(self, folder: str | Path, preferred_format: str) -> None:
        self._folder = Path(folder).resolve()
        formats = [preferred_format] + [f for f in CONTENT_TYPES if f != preferred_format]
        self._formats = list(dict.fromkeys(formats))

    def _candidates(self, recording_name: str) -> list[tuple[Path, str]]:
        out: list[tuple[Path, str]] = []
        for fmt in self._formats:
            path = (self._folder / f"{recording_name}.{_EXTENSIONS.get(fmt, fmt)}").resolve()
            # Names come from our rows, but a path outside the folder is never opened nor deleted.
            if self._folder in path.parents:
                out.append((path, fmt))
        return out

    async def open(self, recording_name: str) -> OpenRecording:
        for path, fmt in self._candidates(recording_name):
            try:
                handle = await asyncio.to_thread(path.open, "rb")
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise SourceUnavailable(type(exc).__name__) from None
            size = (await asyncio.to_thread(path.stat)).st_size
            return _FileRecording(handle, size, fmt)
        raise RecordingMissing(recording_name)

    async def delete(self, recording_name: str) -> bool:
        deleted = False
        for path, _ in self._candidates(recording_name):
            try:
                await asyncio.to_thread(path.unlink)
                deleted = True
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise SourceUnavailable(type(exc).__name__) from None
        return deleted

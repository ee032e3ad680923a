"""Streaming multipart reader: the file part goes straight into a store staging object.

No temporary copy outside the store, a byte cap enforced while reading (413 before more than the
cap plus one chunk is read), SHA-256 computed on the way, small text fields capped too. The
client's file name is kept as metadata only and never used in a path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import ApiError
from models_store import StagedObject, TooLarge

__all__ = ["MAX_FIELD_BYTES", "MULTIPART_OVERHEAD", "Upload", "read_multipart"]

MAX_FIELD_BYTES = 64 * 1024
"""Largest text field (architecture or schema JSON)."""
MAX_PARTS = 8
MULTIPART_OVERHEAD = 256 * 1024
"""Allowance for boundaries, headers and text fields on top of the file cap."""
HEAD_BYTES = 64
MAX_BOUNDARY = 200
MAX_FILENAME = 255


@dataclass
class Upload:
    """What a multipart body held: text fields, and whether/how the file part arrived."""

    fields: dict[str, str] = field(default_factory=dict)
    has_file: bool = False
    filename: str | None = None
    head: bytes = b""


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "upload_too_large", f"the upload is larger than the limit of {limit} bytes; "
                    "nothing was stored")


class _Collector:
    """python-multipart callbacks writing the file part to ``staged`` and buffering fields."""

    def __init__(self, staged: StagedObject, file_field: str) -> None:
        self.staged, self.file_field, self.upload = staged, file_field, Upload()
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._is_file = False
        self._buffer = bytearray()
        self.parts = 0

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_val, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done, "on_part_data": self._data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise ApiError(400, "malformed_multipart", f"at most {MAX_PARTS} parts are accepted")
        self._headers, self._buffer, self._name, self._is_file = {}, bytearray(), None, False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_val(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == self.file_field:
            if self.upload.has_file:
                raise ApiError(400, "malformed_multipart", f"send one '{self.file_field}' part only")
            self._is_file = True
            self.upload.has_file = True
            raw = options.get(b"filename")
            if raw is not None:
                self.upload.filename = raw.decode("utf-8", "replace").replace("\x00", "")[:MAX_FILENAME]

    def _data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._is_file:
            if len(self.upload.head) < HEAD_BYTES:
                self.upload.head += chunk[: HEAD_BYTES - len(self.upload.head)]
            self.staged.write(chunk)
            return
        if len(self._buffer) + len(chunk) > MAX_FIELD_BYTES:
            raise ApiError(413, "field_too_large", f"form field '{self._name}' is larger than "
                           f"{MAX_FIELD_BYTES} bytes")
        self._buffer += chunk

    def _part_end(self) -> None:
        if not self._is_file and self._name:
            self.upload.fields[self._name] = self._buffer.decode("utf-8", "replace")


def _boundary(content_type: str | None) -> bytes:
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise ApiError(415, "unsupported_media_type", "send the upload as multipart/form-data")
    if len(boundary) > MAX_BOUNDARY:  # RFC 2046 allows 70; python-multipart raises past 256
        raise ApiError(400, "malformed_multipart", f"the multipart boundary is longer than {MAX_BOUNDARY} "
                       "characters")
    return boundary


async def read_multipart(stream: AsyncIterator[bytes], content_type: str | None,
                         content_length: str | None, staged: StagedObject, file_field: str,
                         limit: int) -> Upload:
    """Parse a multipart body, streaming part ``file_field`` into ``staged`` (at most ``limit`` bytes).

    Raises:
        ApiError: 415 not multipart, 413 over the cap, 400 malformed body.
    """
    boundary = _boundary(content_type)
    if content_length and content_length.isdigit() and int(content_length) > limit + MULTIPART_OVERHEAD:
        raise _too_large(limit)
    collector = _Collector(staged, file_field)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > limit + MULTIPART_OVERHEAD:
                raise _too_large(limit)
            parser.write(chunk)
        parser.finalize()
    except TooLarge as exc:
        raise _too_large(limit) from exc
    except MultipartParseError as exc:
        raise ApiError(400, "malformed_multipart", f"the multipart body is malformed: {exc}") from exc
    return collector.upload

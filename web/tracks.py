"""POST /api/channels/{channel}/tracks: queue a music track (producer only).

Three ways in: a raw audio body (any audio/* or application/octet-stream type;
`?filename=` names it), a multipart form with a `file` field (the console), or
JSON `{"path": "..."}` naming a file in the configured music folder. Uploads
stream to a temporary file with a size cap; whatever happens, it is removed.
"""

import contextlib
import os
import tempfile
from pathlib import Path
from urllib.parse import unquote

from aiohttp import BodyPartReader, web

from broadcaster.errors import BadInput, PayloadTooLarge

from .access import producer_channel
from .http_util import UnsupportedMedia, json_body, while_connected
from .keys import CONFIG, STATION

READ_BYTES = 256 * 1024
OTHER_FIELD_BYTES = 64 * 1024
OTHER_FIELDS = 32  # a form names a file and perhaps a title: thousands of fields are not a form of ours


async def add_track(request: web.Request) -> web.Response:
    name = await producer_channel(request)
    station = request.app[STATION]
    if request.content_type == "application/json":
        body = await json_body(request)
        source = station.music_file(body.get("path"))
        queued, position = await while_connected(request, station.add_track(name, source, source.name))
    else:
        with _upload_file(request) as path:
            filename = await _receive(request, path)
            queued, position = await while_connected(request, station.add_track(name, path, filename))
    return web.json_response(_track_json(queued, position), status=202)


def _track_json(queued, position: int) -> dict:  # noqa: ANN001
    return {
        "request_id": queued.request_id,
        "status": queued.state.value,
        "position": position,
        "title": queued.title,
        "artist": queued.artist,
        "chunks": len(queued.sentences),
    }


@contextlib.contextmanager
def _upload_file(request: web.Request):  # noqa: ANN202
    directory = request.app[CONFIG].data_path / "uploads"
    directory.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=directory, suffix=".upload")
    os.close(handle)
    try:
        yield Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


async def _receive(request: web.Request, path: Path) -> str:
    """Stream the upload to `path`; returns the client's file name."""
    limit = int(request.app[CONFIG].music.max_upload_mb * 1024 * 1024)
    if request.content_type == "multipart/form-data":
        try:
            part = await _file_part(request)
            await _copy(part.read_chunk, path, limit)
        except ValueError as exc:  # aiohttp's multipart reader on a form that is not one (no or wrong boundary)
            raise BadInput(
                f"expected a multipart form with a file field, got one that does not parse: {exc}"[:200]
            ) from None
        return unquote(part.filename or "upload")[:200]  # some clients percent-encode the name
    if not (request.content_type.startswith("audio/") or request.content_type == "application/octet-stream"):
        raise UnsupportedMedia(f"expected an audio/* body, a multipart form or JSON, got {request.content_type!r}")
    await _copy(request.content.read, path, limit)
    return request.query.get("filename", "upload")[:200]


async def _file_part(request: web.Request) -> BodyPartReader:
    reader = await request.multipart()
    size = fields = 0
    async for part in reader:
        if isinstance(part, BodyPartReader) and part.name == "file":
            return part
        fields += 1
        if fields > OTHER_FIELDS:
            raise PayloadTooLarge(f"expected at most {OTHER_FIELDS} form fields other than the file, got more")
        size = await _skip(part, size)
    raise BadInput('expected a multipart form with a "file" field')


async def _skip(part, size: int) -> int:  # noqa: ANN001
    """Read past a field that is not the file; returns `size`, the bytes of such fields so far, with this
    one's. The form's other fields are small: OTHER_FIELD_BYTES together."""
    if not isinstance(part, BodyPartReader):
        raise BadInput('expected a multipart form with a "file" field, got a nested form')
    while data := await part.read_chunk(READ_BYTES):
        size += len(data)
        if size > OTHER_FIELD_BYTES:
            raise PayloadTooLarge(
                f"expected form fields other than the file of at most {OTHER_FIELD_BYTES} bytes together"
            )
    return size


async def _copy(read, path: Path, limit: int) -> None:  # noqa: ANN001
    size = 0
    with open(path, "wb") as out:
        while data := await read(READ_BYTES):
            size += len(data)
            if size > limit:
                raise PayloadTooLarge(f"expected an upload of at most {limit / (1024 * 1024):g} MB, got more")
            out.write(data)
    if size == 0:
        raise BadInput("expected an audio file in the body, got nothing")

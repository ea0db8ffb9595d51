"""GET /c/{channel}/live.mp3: the channel as an endless MP3 any radio app can open.

Icecast-style headers; with `Icy-MetaData: 1` the response carries ICY metadata
(`StreamTitle`) every `icy-metaint` bytes, the way SHOUTcast/Icecast players expect.
The body is framed as Icecast frames it, for every client: no length and no chunked
encoding, `Connection: close`, so it ends when the connection does. Rippers such as
streamripper count `icy-metaint` bytes of the raw body; chunk-size lines would land
inside the audio and the metadata.
"""

import contextlib

from aiohttp import web

from broadcaster.runtime.live import LiveListener, LiveStream
from broadcaster.runtime.runner import ChannelRunner

from .access import remote_of, require_listener
from .keys import ACCESS, CONFIG, LIVE, STATION, WATCH
from .revocation import Watched

METAINT = 16000


class CloseDelimitedResponse(web.StreamResponse):
    """A streamed response whose body ends when the connection closes (HTTP/1.0 framing, valid in HTTP/1.1).

    aiohttp frames any HTTP/1.1 response of unknown length as chunked and offers no switch for it.
    Its own WebSocketResponse skips that framing with the class attribute `_length_check`; this
    subclass sets the same attribute (aiohttp itself is not changed). tests/integration/
    test_radio_clients.py reads the raw bytes, so an aiohttp that stops honouring it fails there.
    """

    _length_check = False

    def __init__(self, headers: dict[str, str]):
        super().__init__(headers={**headers, "Connection": "close"})
        self.force_close()


class IcyWriter:
    """Writes audio, interleaving a metadata block after every `metaint` bytes of it."""

    def __init__(self, response: web.StreamResponse, metaint: int | None):
        self.response = response
        self.metaint = metaint
        self.until_meta = metaint or 0
        self.sent_title: str | None = None

    async def write(self, data: bytes, title: str) -> None:
        if not self.metaint:
            await self.response.write(data)
            return
        while data:
            part, data = data[: self.until_meta], data[self.until_meta :]
            await self.response.write(part)
            self.until_meta -= len(part)
            if self.until_meta == 0:
                await self.response.write(self.block(title))
                self.until_meta = self.metaint

    def block(self, title: str) -> bytes:
        """A metadata block: a length byte (in 16-byte units) and the padded text; empty if unchanged."""
        if title == self.sent_title:
            return b"\x00"
        self.sent_title = title
        safe = title.replace("'", "\u2019")
        meta = f"StreamTitle='{safe}';".encode()[: 255 * 16]
        units = -(-len(meta) // 16)
        return bytes([units]) + meta.ljust(units * 16, b"\x00")


async def live_mp3(request: web.Request) -> web.StreamResponse:
    runner = await request.app[STATION].runner(request.match_info["channel"])
    credential = await require_listener(request, runner.name)
    with (
        request.app[ACCESS].connection(remote_of(request)),
        request.app[WATCH].watch(runner.name, credential) as watched,
    ):  # ends it if the key is replaced
        return await _play(request, runner, watched)


async def _play(request: web.Request, runner: ChannelRunner, watched: Watched) -> web.StreamResponse:
    live = await request.app[LIVE].stream(runner)
    icy = request.headers.get("Icy-MetaData", "").strip() == "1"
    response = CloseDelimitedResponse(_headers(request, runner.name, icy))
    await response.prepare(request)
    listener = live.subscribe()
    watched.on_revoke(lambda reason: listener.end())
    try:
        await _pump(listener, live, IcyWriter(response, METAINT if icy else None))
    except (ConnectionError, RuntimeError):
        pass  # the player went away
    finally:
        live.unsubscribe(listener)
    with contextlib.suppress(ConnectionError, RuntimeError):
        await response.write_eof()
    return response


async def _pump(listener: LiveListener, live: LiveStream, writer: IcyWriter) -> None:
    while (data := await listener.queue.get()) is not None:
        await writer.write(data, live.title)


def _headers(request: web.Request, channel: str, icy: bool) -> dict[str, str]:
    headers = {
        "Content-Type": "audio/mpeg",
        "Cache-Control": "no-cache, no-store",
        "icy-name": f"{channel} (Broadcaster)",
        "icy-description": "Synchronized radio",
        "icy-br": str(request.app[CONFIG].live.bitrate_kbps),
        "icy-pub": "0",
    }
    if icy:
        headers["icy-metaint"] = str(METAINT)
    return headers

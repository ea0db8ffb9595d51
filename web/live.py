"""GET /c/{channel}/live.mp3: the channel as an endless MP3 any radio app can open.

Icecast-style headers; with `Icy-MetaData: 1` the response carries ICY metadata
(`StreamTitle`) every `icy-metaint` bytes, the way SHOUTcast/Icecast players expect.
The body is framed as Icecast frames it, for every client: no length and no chunked
encoding, `Connection: close`, so it ends when the connection does. Rippers such as
streamripper count `icy-metaint` bytes of the raw body; chunk-size lines would land
inside the audio and the metadata.

In a cluster every process renders and encodes the stream for its own players: from the
channel's runner while it runs here, else from its replica (web/replica.py).
"""

import contextlib

from aiohttp import web

from broadcaster.core.icy import METAINT
from broadcaster.runtime.live import Playable

from .access import remote_of, require_listener
from .keys import ACCESS, CLUSTER, CONFIG, FEEDS, LIVE, STATION, WATCH
from .replica import Followed, replica_of
from .revocation import Watched


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


async def live_mp3(request: web.Request) -> web.StreamResponse:
    app, name = request.app, request.match_info["channel"]
    runner = None if CLUSTER in app else await app[STATION].runner(name)
    if runner is None:
        await app[STATION].channel_id(name)  # 404 for a channel that does not exist
    credential = await require_listener(request, name)
    with (
        app[ACCESS].connection(remote_of(request)),
        app[WATCH].watch(name, credential) as watched,
    ):  # ends it if the key is replaced
        playable = runner if runner is not None else Followed(app[STATION].runners, await replica_of(app[FEEDS], name))
        return await _play(request, playable, watched)


async def _play(request: web.Request, playable: Playable, watched: Watched) -> web.StreamResponse:
    """The stream writes the audio to the transport itself, the same bytes to every player
    (broadcaster/runtime/live.py); this handler only waits for the player's stream to end."""
    icy = request.headers.get("Icy-MetaData", "").strip() == "1"
    response = CloseDelimitedResponse(_headers(request, playable.name, icy))
    if request.method == "HEAD":  # what a player would be told, and no audio
        await response.prepare(request)
        return response
    live = await request.app[LIVE].stream(playable)
    await response.prepare(request)  # a StreamResponse sends its headers here, before any audio
    transport = request.transport
    if transport is None or transport.is_closing():
        return response  # the player left already
    listener = live.subscribe(transport, icy)
    watched.on_revoke(lambda reason: live.end(listener))
    try:
        await listener.ended
    finally:
        live.unsubscribe(listener)
    with contextlib.suppress(ConnectionError, RuntimeError):
        await response.write_eof()
    return response


def _headers(request: web.Request, channel: str, icy: bool) -> dict[str, str]:
    live = request.app[CONFIG].live
    headers = {
        "Content-Type": "audio/mpeg",
        "Cache-Control": "no-cache, no-store",
        "icy-name": f"{channel} (Broadcaster)",
        "icy-description": "Synchronized radio",
        "icy-br": str(live.bitrate_kbps),
        "icy-sr": str(live.sample_rate),
        # As Icecast says it; Android's ExoPlayer and others read the format from here.
        "ice-audio-info": f"ice-samplerate={live.sample_rate};ice-bitrate={live.bitrate_kbps};ice-channels={live.channels}",
        "icy-pub": "0",
    }
    if icy:
        headers["icy-metaint"] = str(METAINT)
    return headers

"""The real server on a real PostgreSQL server ([server] database_url): a narration plays end to end to a real
WebSocket listener, and what the server stored, acknowledged and counted is read back from PostgreSQL."""

import aiohttp
import websockets
from conftest import Listener, start_server

from broadcaster.core.states import ChunkState, RequestState


async def test_a_narration_plays_end_to_end_on_postgresql(tmp_path, postgres_url):
    """Submitted, synthesized, announced, acknowledged and played, with every row in PostgreSQL; /metrics counts
    it there, and the purge deletes it with its chunks and acknowledgements."""
    runner, server = await start_server(tmp_path, {"server": {"database_url": postgres_url}})
    store = server.station.store
    try:
        assert store.engine.dialect.name == "postgresql"
        async with websockets.connect(server.ws_url()) as ws:
            listener = Listener(ws)
            connection_id = (await listener.next("snapshot"))["connection_id"]
            resp = await server.say("Hello from PostgreSQL. A second sentence.")
            assert resp.status == 202
            request_id = (await resp.json())["request_id"]
            first = await listener.next("audio_chunk_ready")
            await listener.send({"type": "audio_played", "chunk_id": first["chunk_id"]})
            assert not (await listener.next("ack_recorded"))["duplicate"]
            played = await listener.next("request_played", timeout=20)
        assert played["request_id"] == request_id
        stored = await store.request(request_id)
        assert stored.state == RequestState.PLAYED
        assert [(c.text, c.state) for c in stored.chunks] == [
            ("Hello from PostgreSQL.", ChunkState.PLAYED),
            ("A second sentence.", ChunkState.PLAYED),
        ]
        assert [chunk for chunk, _ in await store.acks(connection_id)] == [first["chunk_id"]]
        async with aiohttp.ClientSession() as http:
            async with http.get(server.base_url + "/metrics") as metrics:
                assert 'broadcaster_requests{channel="table",state="played"} 1' in await metrics.text()
        assert await store.purge_finished(stored.finished_at_ms + 1) == [request_id]
        assert await store.request(request_id) is None and await store.acks(connection_id) == []
    finally:
        await runner.cleanup()

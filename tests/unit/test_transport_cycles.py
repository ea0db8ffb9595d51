"""A closed TCP connection is freed at once, not left in a reference cycle for the cycle collector
(where the server freezes survivors, such a cycle would wait for the next walk of everything)."""

import asyncio
import gc
from asyncio import selector_events

from broadcaster.process import free_closed_transports_at_once


async def closed_connection_garbage() -> list[str]:
    """The types of the objects one closed loopback connection (both ends) leaves in cycles."""
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()
        await writer.wait_closed()
        done.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # the collector keeps what it would free, so it can be looked at
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        writer.write_eof()
        await reader.read()
        writer.close()
        await writer.wait_closed()
        await done.wait()
        for _ in range(3):
            await asyncio.sleep(0)  # connection_lost callbacks run on later turns
        gc.collect()
        return [type(obj).__name__ for obj in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        server.close()
        await server.wait_closed()


async def test_a_closed_connection_leaves_no_transport_in_a_cycle():
    assert free_closed_transports_at_once()
    assert free_closed_transports_at_once(), "twice is once"
    garbage = await closed_connection_garbage()
    assert "_SelectorSocketTransport" not in garbage, garbage
    assert selector_events._SelectorSocketTransport._call_connection_lost.frees_read_callback

"""A loopback TCP front for several replicas, as a Kubernetes Service is for its pods.

Each new connection goes to the first replica, in the order given, that accepts it: while the
first one listens every client talks to it, and once it stops listening (a draining replica
closes its socket) new connections, such as a client's reconnect after a cut response, reach
the next. Bytes pass through untouched; when either side closes, so does the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator, Sequence

from tests.support.processes import free_port

CHUNK = 64 * 1024


class Balancer:
    def __init__(self, ports: Sequence[int]) -> None:
        self.ports = list(ports)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, name="balancer", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("the balancer did not start")

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self) -> None:
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            # Connections still open are dropped with the loop's tasks.
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        upstream = await self._connect()
        if upstream is None:
            client_w.close()
            return
        server_r, server_w = upstream
        pipes = [
            asyncio.create_task(_pipe(client_r, server_w)),
            asyncio.create_task(_pipe(server_r, client_w)),
        ]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            for writer in (client_w, server_w):
                writer.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for port in self.ports:
            with contextlib.suppress(OSError):
                return await asyncio.open_connection("127.0.0.1", port)
        return None


@contextlib.contextmanager
def front(ports: Sequence[int]) -> Iterator[Balancer]:
    """A started balancer over ``ports``, stopped afterwards."""
    balancer = Balancer(ports)
    balancer.start()
    try:
        yield balancer
    finally:
        balancer.stop()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await source.read(CHUNK):
            sink.write(data)
            await sink.drain()

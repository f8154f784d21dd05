"""A local TCP proxy that delays every request, or refuses every connection while it is
stopped: a slow or unreachable service (Prefect's API, say) for tests and benchmarks.

It runs its own event loop in a thread, so synchronous fixtures and async tests both use it:

    with SlowProxy("127.0.0.1", 4200, delay_s=1.0) as proxy:
        ... PREFECT_API_URL = f"{proxy.url}/api" ...
        proxy.stop()    # connections refused, open ones cut
        proxy.start()   # on the same port again
        proxy.hold()    # connections accepted, requests held (not forwarded) ...
        proxy.release() # ... until released

A request is what a client sends after the upstream's last answer on that connection
(HTTP/1.1 keep-alive: one request at a time), so each is delayed once, however many
chunks it comes in.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from typing import Any

CHUNK = 65536


class SlowProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, delay_s: float = 0.0, port: int = 0):
        self.upstream = (upstream_host, upstream_port)
        self.delay_s = delay_s
        self.requests = 0
        """Requests forwarded so far (each delayed ``delay_s``)."""
        self._loop = asyncio.new_event_loop()
        self._open = asyncio.Event()  # cleared while held; used on the proxy's loop only
        self._open.set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="slow-proxy", daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = port or _free_port()
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen (again) on the proxy's port."""
        if self._server is None:
            self._server = self._run(asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True))

    def stop(self) -> None:
        """Refuse connections and cut the open ones: the upstream is unreachable."""
        if self._server is not None:
            server, self._server = self._server, None
            self._run(self._close(server))

    def hold(self) -> None:
        """Hold every request from now on (a Prefect that does not answer at all): none is
        forwarded until ``release``; a client sees no error, only no answer."""
        self._run(self._set_open(False))

    def release(self) -> None:
        self._run(self._set_open(True))

    async def _set_open(self, forwarding: bool) -> None:
        if forwarding:
            self._open.set()
        else:
            self._open.clear()

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> SlowProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    async def _close(self, server: asyncio.Server) -> None:
        server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await server.wait_closed()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update((client_writer, upstream_writer))
        answered = asyncio.Event()
        answered.set()  # the first chunk starts a request

        async def requests() -> None:
            while data := await client_reader.read(CHUNK):
                if answered.is_set():  # a new request: hold it while held, then delay it
                    answered.clear()
                    await self._open.wait()
                    await asyncio.sleep(self.delay_s)
                    self.requests += 1
                upstream_writer.write(data)
                await upstream_writer.drain()

        async def answers() -> None:
            while data := await upstream_reader.read(CHUNK):
                answered.set()
                client_writer.write(data)
                await client_writer.drain()

        tasks = [asyncio.create_task(requests()), asyncio.create_task(answers())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for writer in (client_writer, upstream_writer):
                self._writers.discard(writer)
                with contextlib.suppress(Exception):
                    writer.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

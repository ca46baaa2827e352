"""A loopback TCP forwarder that adds round-trip time, and counts flights.

Every chunk read from one side is written to the other RTT/2 later
(``loop.call_later``), in order, each way: a request and its answer take one
RTT, as over a real network (bandwidth is not modelled).  A *flight* is a
burst the client sends after it last heard from the server: the round trips
the client waited for.  ``python bench/_latency_proxy.py`` checks the proxy
with a ping-pong: N exchanges take N × RTT.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Pipe:
    """One direction: chunks wait RTT/2, then go out in arrival order."""

    writer: asyncio.StreamWriter
    delay: float
    queue: deque[tuple[float, bytes | None]] = field(default_factory=deque)
    timer: asyncio.TimerHandle | None = None

    def push(self, data: bytes | None) -> None:
        loop = asyncio.get_running_loop()
        self.queue.append((loop.time() + self.delay, data))
        if self.timer is None:
            self.timer = loop.call_at(self.queue[0][0], self._flush)

    def _flush(self) -> None:
        self.timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self.queue and self.queue[0][0] <= now + 1e-4:
            _, data = self.queue.popleft()
            if self.writer.is_closing():
                self.queue.clear()
                return
            if data is None:
                self.writer.close()
            else:
                self.writer.write(data)
        if self.queue:
            self.timer = loop.call_at(self.queue[0][0], self._flush)


class LatencyProxy:
    """``async with LatencyProxy(rtt, (host, port)) as p:`` then connect to
    ``p.port``; ``p.flights`` counts client flights over all connections."""

    def __init__(self, rtt: float, target: tuple[str, int], *, mirror: Any = None) -> None:
        self.rtt = rtt
        self.target = target
        self.port = 0
        self.flights = 0
        self.connections = 0
        # Another process's view of the counts: [flights, connections].
        self._mirror = mirror
        self._server: asyncio.AbstractServer | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> LatencyProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        # Connections a client left open (a relay's cached sessions) end
        # with the proxy: their pumps then see end-of-file and return.
        for w in list(self._open):
            w.close()
        for _ in range(100):
            if not self._open:
                break
            await asyncio.sleep(0.01)

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._mirror is not None:
            self._mirror[1] = self.connections
        s_reader, s_writer = await asyncio.open_connection(*self.target)
        self._open.update((c_writer, s_writer))
        to_server = _Pipe(s_writer, self.rtt / 2)
        to_client = _Pipe(c_writer, self.rtt / 2)
        heard = [True]  # the greeting starts the exchange

        async def pump(reader: asyncio.StreamReader, pipe: _Pipe, from_client: bool) -> None:
            try:
                while data := await reader.read(65536):
                    if from_client:
                        if heard[0]:
                            self.flights += 1
                            if self._mirror is not None:
                                self._mirror[0] = self.flights
                            heard[0] = False
                    else:
                        heard[0] = True
                    pipe.push(data)
            except ConnectionError:
                pass
            pipe.push(None)

        try:
            await asyncio.gather(pump(c_reader, to_server, True), pump(s_reader, to_client, False))
        finally:
            self._open.difference_update((c_writer, s_writer))
            for w in (c_writer, s_writer):
                w.close()


def _serve_in_child(rtt: float, target: tuple[str, int], counts: Any, ports: Any) -> None:
    """A :class:`LatencyProxy` in this process until it is terminated;
    ``counts[0]``/``counts[1]`` mirror its flights and connections."""

    async def serve() -> None:
        async with LatencyProxy(rtt, target, mirror=counts) as proxy:
            ports.put(proxy.port)
            await asyncio.Event().wait()  # until terminated

    asyncio.run(serve())


class ProxyProcess:
    """A :class:`LatencyProxy` in a process of its own, so the forwarding
    does not share the measured client's event loop (or its GIL):
    ``with ProxyProcess(rtt, (host, port)) as p:`` then connect to
    ``p.port``; ``p.flights`` and ``p.connections`` as on the proxy."""

    def __init__(self, rtt: float, target: tuple[str, int]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._counts = ctx.Array("q", 2, lock=False)
        self._ports: Any = ctx.Queue()
        self._proc = ctx.Process(
            target=_serve_in_child, args=(rtt, target, self._counts, self._ports), daemon=True
        )
        self.rtt = rtt
        self.port = 0

    @property
    def flights(self) -> int:
        return int(self._counts[0])

    @property
    def connections(self) -> int:
        return int(self._counts[1])

    def __enter__(self) -> ProxyProcess:
        self._proc.start()
        self.port = int(self._ports.get(timeout=30))
        return self

    def __exit__(self, *exc: object) -> None:
        self._proc.terminate()
        self._proc.join(5)


async def ping_pong(rtt: float, n: int = 20) -> float:
    """Seconds per exchange through the proxy (should be ``rtt``)."""

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(100):
            w.write(data)
        w.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with LatencyProxy(rtt, ("127.0.0.1", port)) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        t0 = time.perf_counter()
        for _ in range(n):
            writer.write(b"ping")
            await reader.readexactly(4)
        per = (time.perf_counter() - t0) / n
        writer.close()
        await asyncio.sleep(rtt * 2)  # let the close travel through
        assert proxy.flights == n, proxy.flights
    server.close()
    await server.wait_closed()
    return per


if __name__ == "__main__":
    for rtt in (0.02, 0.05):
        per = asyncio.run(ping_pong(rtt))
        print(f"RTT {rtt * 1000:.0f} ms: ping-pong {per * 1000:.1f} ms per exchange")

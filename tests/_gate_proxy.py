"""A TCP proxy on 127.0.0.1 that shapes what the server says to the client.

For the adversarial tests of ``Mailer(pipeline_messages=True)``: the
server's bytes can be *held* (nothing reaches the client until
:meth:`GateProxy.release`), which freezes a chained flight at a chosen
point (the previous send reading its dot reply while the next one has
written its envelope), or *trickled* (cut into pieces of a few bytes with a
short pause between them), so every reply arrives split across reads.
The client's bytes always go through at once.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["GateProxy"]


class GateProxy:
    def __init__(self, port: int, *, trickle: int = 0, hold_after: bytes | None = None) -> None:
        self.target = port
        self.trickle = trickle
        """Bytes per piece (0: forward as read)."""
        self.hold_after = hold_after
        """Hold (once) right after forwarding server bytes that contain this
        (``b"354 "``: the reply to the next final dot is held)."""
        self.port = 0
        self.to_client = 0
        """Bytes of the server's forwarded so far."""
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sessions: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> GateProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self._open.set()
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()  # the pipes; each session then ends on its own
        await asyncio.gather(*self._tasks, *self._sessions, return_exceptions=True)
        await self._server.wait_closed()

    def hold(self) -> None:
        """From now on, keep the server's bytes until :meth:`release`."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            sreader, swriter = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            cwriter.transport.abort()
            self._sessions.discard(task)
            return
        self._writers |= {cwriter, swriter}
        up = asyncio.create_task(self._pipe(creader, swriter, False))
        down = asyncio.create_task(self._pipe(sreader, cwriter, True))
        self._tasks |= {up, down}
        try:
            await asyncio.gather(up, down, return_exceptions=True)
        finally:
            for w in (cwriter, swriter):
                w.transport.abort()
                self._writers.discard(w)
            self._tasks -= {up, down}
            self._sessions.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, shaped: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if not shaped:
                    writer.write(data)
                    await writer.drain()
                    continue
                await self._open.wait()
                step = self.trickle or len(data)
                for i in range(0, len(data), step):
                    writer.write(data[i : i + step])
                    await writer.drain()
                    self.to_client += len(data[i : i + step])
                    if self.trickle:
                        await asyncio.sleep(0.001)
                if self.hold_after is not None and self.hold_after in data:
                    self.hold_after = None
                    self.hold()
            # The other side closed: pass the close on (after what was held).
            await self._open.wait()
            writer.close()

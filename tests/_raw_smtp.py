"""A small SMTP server in raw asyncio on 127.0.0.1, for the transport's
fault tests and benchmarks.

It reads commands in order from the stream (so a pipelined flight works as
RFC 2920 says), offers PIPELINING and CHUNKING (BDAT, RFC 3030) when asked,
and keeps its own record of what it took: ``stored`` holds every message it
accepted, with its recipients, so a test can check that nothing was lost and
nothing arrived twice.  ``faults`` makes it hostile at a chosen point.

A fault is keyed by ``(connection_number, transaction_number, point)``
(the transaction's number on that connection, from 1),
``(connection_number, point)`` or ``point`` (every connection), where point
is ``"mail"``, ``"rcpt1"``, ``"rcpt2"``, ..., ``"data"``, ``"dot"`` (after
the final dot), ``"bdat"`` (after BDAT LAST's chunk); the value is the
raw bytes to answer instead, or ``DROP`` (close without answering) or
``STALL`` (never answer).  A reply starting with 421
also closes.  After the dot or BDAT the message is stored unless the
answer is a 4xx/5xx refusal: a dropped, stalled or unreadable answer
leaves it stored (the client cannot know it arrived).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field
from typing import Any

DROP = b"<drop>"
STALL = b"<stall>"

_ADDR = re.compile(rb"<([^>]*)>")


@dataclass
class Stored:
    sender: str
    recipients: tuple[str, ...]
    data: bytes


@dataclass
class RawSMTPServer:
    pipelining: bool = True
    chunking: bool = False
    faults: dict[Any, bytes] = field(default_factory=dict)
    hold_replies: bool = False
    """Hold the replies to MAIL and RCPT and send them with the next one in
    one write (RFC 2920 §3.1 lets a server hold them until DATA, RSET, ...),
    instead of one write per reply."""
    dot_waits: float = 0.0
    """After a final dot, wait up to this long for the client's next line
    before answering it: a client that writes its next envelope right
    behind the dot is counted in ``chained`` (and with ``hold_replies`` the
    dot's reply is held too, merged with the next envelope's replies)."""
    dot_waits_at: frozenset[tuple[int, int]] | None = None
    """Only at these (connection, transaction) dots; ``None``: at every one."""
    chained: int = 0
    host: str = "127.0.0.1"
    port: int = 0
    stored: list[Stored] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    connections: int = 0
    open_connections: int = 0
    reached: dict[str, asyncio.Event] = field(default_factory=dict)
    _server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> RawSMTPServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def event(self, point: str) -> asyncio.Event:
        return self.reached.setdefault(point, asyncio.Event())

    @property
    def delivered_to(self) -> list[str]:
        return [r for m in self.stored for r in m.recipients]

    def _fault(self, n: int, point: str, mark: bool = True, t: int = 0) -> bytes | None:
        if mark:
            self.event(point).set()
        f = self.faults.get((n, t, point))
        return f if f is not None else self.faults.get((n, point), self.faults.get(point))

    def _store(self, n: int, point: str, message: Stored, t: int = 0) -> None:
        """Keep the message unless the answer to it will refuse it."""
        f = self._fault(n, point, mark=False, t=t)
        if f is None or f[:1] not in (b"4", b"5"):
            self.stored.append(message)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        n = self.connections
        out: list[bytes] = []
        verb = ""
        t = 0  # the transaction's number on this connection
        hold_dot = False
        pending: list[bytes] = []  # a line read ahead (dot_waits)

        async def reply(text: bytes) -> None:
            out.append(text if text.endswith(b"\r\n") else text + b"\r\n")
            held = verb in ("MAIL", "RCPT") or (verb == "DATA" and hold_dot)
            if not self.hold_replies or not held:
                writer.write(b"".join(out))
                out.clear()
                await writer.drain()

        async def faulty(point: str) -> bool:
            """Answer with the fault for ``point``; True if the session ended
            or the normal answer must not follow."""
            f = self._fault(n, point, t=t)
            if f is None:
                return False
            if f == DROP:
                writer.write(b"".join(out))
                raise ConnectionResetError
            if f == STALL:
                writer.write(b"".join(out))
                while await reader.read(65536):  # never answer; notice the close
                    pass
                raise ConnectionResetError
            await reply(f)
            if f.startswith(b"421"):
                raise ConnectionResetError
            return True

        try:
            await reply(b"220 raw.test ESMTP")
            sender: str | None = None
            rcpts: list[str] = []
            k = 0
            while True:
                line = pending.pop() if pending else await reader.readline()
                if not line:
                    break
                cmd = line.rstrip(b"\r\n")
                verb = cmd.split(b" ", 1)[0].upper().decode()
                self.commands.append(verb)
                if verb in ("EHLO", "HELO"):
                    ext = [b"250-raw.test", b"250-8BITMIME", b"250-SIZE 10000000"]
                    if self.pipelining:
                        ext.append(b"250-PIPELINING")
                    if self.chunking:
                        ext.append(b"250-CHUNKING")
                    await reply(b"\r\n".join([*ext, b"250 ENHANCEDSTATUSCODES"]))
                elif verb == "MAIL":
                    sender, rcpts, k = None, [], 0
                    t += 1
                    answered = await faulty("mail")
                    f = self._fault(n, "mail", mark=False, t=t)
                    if not answered or (f is not None and f.startswith(b"2")):
                        m = _ADDR.search(cmd)
                        sender = m.group(1).decode() if m else ""
                    if not answered:
                        await reply(b"250 2.1.0 Ok")
                elif verb == "RCPT":
                    k += 1
                    if sender is None:
                        await reply(b"503 5.5.1 Error: need MAIL command")
                    else:
                        answered = await faulty(f"rcpt{k}")
                        f = self._fault(n, f"rcpt{k}", mark=False, t=t)
                        if not answered or (f is not None and f.startswith(b"2")):
                            # A scripted 2xx (251, 252) accepts the recipient.
                            m = _ADDR.search(cmd)
                            rcpts.append(m.group(1).decode() if m else "")
                        if not answered:
                            await reply(b"250 2.1.5 Ok")
                elif verb == "DATA":
                    if not rcpts:
                        await reply(b"554 5.5.1 Error: no valid recipients")
                        continue
                    if await faulty("data"):
                        continue
                    await reply(b"354 End data with <CR><LF>.<CR><LF>")
                    lines = []
                    while True:
                        part = await reader.readline()
                        if not part:
                            raise ConnectionResetError
                        if part == b".\r\n":
                            break
                        lines.append(part[1:] if part.startswith(b".") else part)
                    self._store(n, "dot", Stored(sender or "", tuple(rcpts), b"".join(lines)), t)
                    sender, rcpts = None, []
                    at = self.dot_waits_at
                    if self.dot_waits and (at is None or (n, t) in at):
                        with contextlib.suppress(asyncio.TimeoutError):
                            pending.append(
                                await asyncio.wait_for(reader.readline(), self.dot_waits)
                            )
                            self.chained += 1
                    hold_dot = bool(pending)
                    if not await faulty("dot"):
                        await reply(b"250 2.0.0 Ok: queued")
                    hold_dot = False
                elif verb == "BDAT":
                    size = int(cmd.split()[1])
                    chunk = await reader.readexactly(size)
                    if not rcpts:
                        await reply(b"554 5.5.1 Error: no valid recipients")
                        continue
                    self._store(n, "bdat", Stored(sender or "", tuple(rcpts), chunk), t)
                    sender, rcpts = None, []
                    if not await faulty("bdat"):
                        await reply(b"250 2.0.0 Ok: queued")
                elif verb == "RSET":
                    sender, rcpts = None, []
                    await reply(b"250 2.0.0 Ok")
                elif verb == "NOOP":
                    await reply(b"250 2.0.0 Ok")
                elif verb == "QUIT":
                    await reply(b"221 2.0.0 Bye")
                    break
                else:
                    await reply(b"502 5.5.2 Error: command not recognized")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_connections -= 1
            writer.close()


async def _main(port: int, chunking: bool) -> None:
    async with RawSMTPServer(chunking=chunking, port=port) as server:
        print(server.port, flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":  # for the benchmarks: a server in its own process
    import sys

    asyncio.run(_main(int(sys.argv[1]), "--chunking" in sys.argv))

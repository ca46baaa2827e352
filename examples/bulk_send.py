"""Send a few hundred messages with bounded concurrency and a progress bar.

Run it with ``python examples/bulk_send.py`` (the bar needs the ``progress``
extra: ``pip install 'resilient-smtp[progress]'``).  It starts a scripted SMTP
server on 127.0.0.1 that throttles the first few transactions with
``421 4.7.0 Try again later, closing connection``, greylists three
recipients (``450 4.2.0 Greylisted``) and does not know one
(``550 5.1.1 User unknown``).

One Mailer is shared by every send: its pool, limiter and destination health
only work when they see all the traffic to a destination.
``Mailer.send_many`` keeps at most ``CONCURRENCY`` sends in flight (the
Mailer's pool caps the connections on top of that: 4 per destination by
default), hands back each message's result as it finishes and draws the
bar.  At the end, the deferred recipients are listed with the time after
which a retry is worth it, for a queue to pick them up again.  It finishes
in a few seconds.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from email.message import EmailMessage

from resilient_smtp import Event, Mailer, Reason, RetryPolicy, SendResult, State
from resilient_smtp.testing import ScriptedSMTPServer

COUNT = 300
CONCURRENCY = 8
UNKNOWN = "nobody@example.com"
GREYLISTED = ("user7@example.net", "user107@example.net", "user207@example.net")
THROTTLED = ("user60@example.com", "user160@example.com", "user260@example.com")
THROTTLE = "421 4.7.0 Try again later, closing connection"
GREYLIST = "450 4.2.0 Greylisted, see http://postgrey.example/"

# Shortened waits so the example finishes in seconds (the default policy
# waits at least 10 s after a rate limit).  The greylisting floor stays at
# its default, 300 s: longer than the deadline, so greylisted recipients end
# "deferred" with retry_in >= 300 instead of holding a worker for minutes.
POLICY = RetryPolicy(
    deadline=20.0,
    base=0.05,
    cap=0.5,
    min_waits={**RetryPolicy().min_waits, Reason.RATE_LIMITED: 0.3},
)


def messages() -> list[EmailMessage]:
    out = []
    for i in range(COUNT):
        if i == 150:
            to = UNKNOWN
        elif i % 100 == 7:
            to = f"user{i}@example.net"
        else:
            to = f"user{i}@example.com"
        message = EmailMessage()
        message["From"] = "news@example.org"
        message["To"] = to
        message["Subject"] = f"Newsletter, part {i}"
        message.set_content("This week's news.\n")
        out.append(message)
    return out


async def main() -> int:
    async with ScriptedSMTPServer() as server:
        for address in THROTTLED:
            server.on("rcpt", THROTTLE, recipient=address)
        server.on("rcpt", "550 5.1.1 User unknown", recipient=UNKNOWN, times=None)
        for address in GREYLISTED:
            server.on("rcpt", GREYLIST, recipient=address, times=None)
        print(f"sending {COUNT} messages to 127.0.0.1:{server.port}, {CONCURRENCY} at a time")

        results: list[SendResult] = []
        retries: Counter[str] = Counter()

        def count_retries(event: Event) -> None:
            # A hook sees every decision; "retry" events carry the reason.
            if event.kind == "retry":
                retries[str(event.data["reason"])] += 1

        mailer = Mailer("127.0.0.1", server.port, tls="none", retry=POLICY, hooks=[count_retries])
        async with mailer:
            sends = mailer.send_many(messages(), concurrency=CONCURRENCY, progress=True)
            async for sent in sends:  # each message as it gets its final state
                assert sent.result is not None  # (None: a message that cannot be sent)
                results.append(sent.result)

    states = Counter(r.state for result in results for r in result)
    print(", ".join(f"{s.value} {states[s]}" for s in State))
    print("retries:", ", ".join(f"{k} {v}" for k, v in retries.most_common()) or "none")
    for result in results:
        for r in result:
            if r.state is State.DEFERRED:
                print(f"  requeue {r.address}: {r.reason}, retry in {r.retry_in:.0f} s")
            elif r.state is State.REJECTED:
                print(f"  drop {r.address}: {r.reason}")
    total = sum(states.values())
    print(
        f"{total} of {COUNT} messages have a final state; the server took {len(server.messages)}"
    )
    return 0 if total == COUNT else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))

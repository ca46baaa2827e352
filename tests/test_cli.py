"""The command line: ``python -m resilient_smtp classify ...``."""

from __future__ import annotations

import importlib.metadata
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from resilient_smtp.__main__ import main


def _json_lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines()]


def test_classify_prints_reason_transience_action_and_explanation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["classify", "421 4.7.0 Try again later"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == [
        "rate_limited: transient, slow_down (scope: destination; session over)",
        "  reply: 421 4.7.0 Try again later",
        "  why:   421: the server closed the session; text: try again later under a 4.7.x "
        "policy status (text rule)",
    ]


def test_classify_shows_a_permanent_reply_and_a_stated_wait(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["classify", "550 5.1.1 User unknown"]) == 0
    assert capsys.readouterr().out.startswith("recipient_unknown: permanent, give_up_recipient")
    assert main(["classify", "550 Too many messages. Try again in 92 seconds."]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "rate_limited: transient, slow_down (scope: destination; retry after 92 s)"


def test_classify_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["classify", "--json", "--host", "mx3.qq.com", "--stage", "mail",
            "550 Ip frequency limited"]  # fmt: skip
    assert main(argv) == 0
    [record] = _json_lines(capsys.readouterr().out)
    assert record == {
        "input": "550 Ip frequency limited",
        "reason": "rate_limited",
        "transient": True,
        "action": "slow_down",
        "scope": "destination",
        "session_over": False,
        "retry_after": None,
        "reply": {"code": 550, "enhanced": None, "text": "Ip frequency limited"},
        "stage": "mail",
        "rule": "qq: frequency limited (a 5xx rate limit)",
        "explanation": "qq: frequency limited (a 5xx rate limit) (provider rule); the code 550 "
        "says permanent but the reply means transient, and the meaning wins",
    }


def test_classify_several_replies(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classify", "--json", "421 4.3.2 All server ports are busy", "garbage"]) == 0
    records = _json_lines(capsys.readouterr().out)
    assert [r["reason"] for r in records] == ["server_busy", "protocol_error"]


def test_classify_reads_stdin_lines_and_joins_multi_line_replies(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin = (
        "421-4.7.28 [203.0.113.5] Our system has detected an unusual rate of\r\n"
        "421 4.7.28 unsolicited mail originating from your IP address.\r\n"
        "\n"
        "550 5.1.1 User unknown\n"
        "   \n"
        "450 4.2.0 Greylisted, see http://postgrey.schweikert.ch/help/example.com.html"
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert main(["classify", "--json", "--host", "aspmx.l.google.com", "-"]) == 0
    records = _json_lines(capsys.readouterr().out)
    assert [r["reason"] for r in records] == [
        "reputation_deferral",
        "recipient_unknown",
        "greylisted",
    ]
    reply = records[0]["reply"]
    assert isinstance(reply, dict)
    assert reply["text"] == (
        "[203.0.113.5] Our system has detected an unusual rate of unsolicited mail "
        "originating from your IP address."
    )


def test_classify_stdin_with_an_unfinished_multi_line_reply(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("421-4.7.0 cut off here\n"))
    assert main(["classify", "--json", "-"]) == 0
    [record] = _json_lines(capsys.readouterr().out)
    assert record["session_over"] is True


def test_classify_stdin_empty(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["classify", "-"]) == 0
    assert capsys.readouterr().out == ""


def test_classify_non_ascii_json_stays_readable(capsys: pytest.CaptureFixture[str]) -> None:
    text = "550 5.5.0 Le compte du destinataire est bloqué."
    assert main(["classify", "--json", text]) == 0
    out = capsys.readouterr().out
    assert "bloqué" in out
    assert _json_lines(out)[0]["input"] == text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give a command, one of: check, classify, demo, outbox, worker"),
        (["classify", "--stage", "nope", "421 x"], "invalid choice: 'nope'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["classify", "--bogus", "421 x"], "unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors_go_to_stderr_with_status_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classify", "--help"]) == 0
    assert "--json" in capsys.readouterr().out


def test_python_dash_m_runs_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "resilient_smtp", "classify", "--json",
         "550 4.4.7 QUEUE.Expired; message expired"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [record] = _json_lines(done.stdout)
    assert (record["reason"], record["transient"]) == ("expired", False)


def test_python_dash_m_usage_error_names_the_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "resilient_smtp", "classify", "--stage", "nope", "421 x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert "python -m resilient_smtp classify: error:" in done.stderr


def test_the_entry_point_names_itself_resilient_smtp(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The installed script calls main() with no arguments: its default prog.
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: resilient-smtp ")
    assert "resilient-smtp: error: argument COMMAND: invalid choice" in err
    script = Path(sys.executable).parent / "resilient-smtp"
    if script.exists():  # installed (pip install -e .): the real script too
        done = subprocess.run(
            [str(script), "frobnicate"], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 2
        assert done.stderr.startswith("usage: resilient-smtp ")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out == f"resilient-smtp {importlib.metadata.version('resilient-smtp')}\n"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_classify_without_a_reply_at_a_terminal_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", _Terminal("421 4.7.0 typed but never read\n"))
    assert main(["classify"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "give at least one reply, or pipe replies in" in err


def test_classify_without_a_reply_reads_a_pipe(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("421 4.7.0 Try again later\n"))
    assert main(["classify", "--json"]) == 0
    [record] = _json_lines(capsys.readouterr().out)
    assert record["reason"] == "rate_limited"


def test_echo_into_python_dash_m_classify() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "resilient_smtp", "classify"],
        input="550 5.1.1 User unknown\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("recipient_unknown: permanent")

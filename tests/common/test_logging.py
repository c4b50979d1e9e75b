"""The services' log lines (libs/common/logging.py), as a service writes them to its
stdout: one JSON object a line, secrets masked, any value written rather than lost."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import orjson

SCRIPT = textwrap.dedent(
    """
    import logging, uuid
    from datetime import UTC, datetime
    from libs.common.logging import configure_logging, get_logger

    class Odd:
        def __repr__(self):
            return "<odd thing>"

    configure_logging("portals")
    log = get_logger("check")
    log.info(
        "first",
        password="hunter2",
        api_token="t0k3n",
        session_cookie="c00k13",
        url="https://agency.example/accept?token=abc123&x=1",
        when=datetime(2026, 12, 2, 8, 30, tzinfo=UTC),
        who=uuid.UUID(int=7),
        thing=Odd(),
        accents="Zoë Ñandú",
    )
    log.info("huge", number=2**70)
    log.debug("hidden")
    logging.getLogger("library").warning("plain %s", "words")
    for n in range(3):
        log.info("counted", n=n)
    """
)


def _run() -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.splitlines()


def test_each_line_is_json_with_secrets_masked_and_every_value_written() -> None:
    lines = _run()
    # The service's own lines; the library's is looked at below.
    entries = [e for e in map(orjson.loads, lines) if "logger" not in e]
    first, huge, *counted = entries
    assert first["event"] == "first" and first["service"] == "portals"
    assert first["level"] == "info" and first["timestamp"].endswith("Z")
    assert first["password"] == first["api_token"] == first["session_cookie"] == "[redacted]"
    assert first["url"] == "https://agency.example/accept?token=[redacted]&x=1"
    assert first["when"] == "2026-12-02T08:30:00+00:00"
    assert first["who"] == "00000000-0000-0000-0000-000000000007"
    assert first["thing"] == "<odd thing>"
    assert first["accents"] == "Zoë Ñandú"
    # Beyond what orjson writes: still a line, the number whole.
    assert huge["event"] == "huge" and huge["number"] == 2**70
    assert [e["n"] for e in counted] == [0, 1, 2]
    assert "hidden" not in "".join(lines)
    # A library's own logger reaches the same stdout, in order, as a JSON line too.
    library = orjson.loads(lines[2])
    assert library["event"] == "plain words" and library["logger"] == "library"
    assert (library["service"], library["level"]) == ("portals", "warning")
    assert all(line.startswith("{") for line in lines)
    assert not any(secret in "".join(lines) for secret in ("hunter2", "t0k3n", "c00k13", "abc123"))


def test_a_link_in_an_exception_is_masked_in_its_traceback() -> None:
    """The traceback of a logged exception was written after the masking ran: an error
    whose text holds a link (an HTTP client's error names the URL it was asked for, with
    its query) reached the log with the token in it."""
    script = textwrap.dedent(
        """
        from libs.common.logging import configure_logging, get_logger

        configure_logging("gateway")
        try:
            raise ValueError("GET http://invitations/invitations/validate?token=s3cr3tT0k3n")
        except ValueError:
            get_logger("check").exception("unhandled_error", path="/invitations/accept")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    [entry] = [orjson.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert "validate?token=[redacted]" in entry["exception"]
    assert "s3cr3tT0k3n" not in done.stdout


def test_passwords_in_urls_and_secret_headers_are_masked_in_any_text() -> None:
    """A DSN's password and an Authorization or API-key header written in a message (a
    library's error names the URL it connected to, or the headers it sent) reached the
    line as they were: only ``token=`` and ``password=`` were masked in a text."""
    script = textwrap.dedent(
        """
        import logging
        from libs.common.logging import configure_logging, get_logger

        configure_logging("mailer")
        get_logger("check").warning(
            "dependency_not_ready",
            error="could not connect to postgresql://clientpress:pgS3cret@db:5432/cp",
            broker="amqps://mailer:amqpS3cret@broker/%2f",
            sent="Authorization: Bearer bearerS3cret",
            shown="{'X-API-Key': 'keyS3cret', 'Accept': 'text/html'}",
            sent_line="Cookie: cp_session=sessionS3cret",
            plain="see https://agency.example/login at 10:30",
        )
        logging.getLogger("aiormq.connection").warning(
            "Connection attempt to %s failed", "amqp://guest:libS3cret@127.0.0.1:5672/"
        )
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    own_line, library_line = done.stdout.splitlines()
    own = orjson.loads(own_line)
    assert own["error"] == "could not connect to postgresql://clientpress:[redacted]@db:5432/cp"
    assert own["broker"] == "amqps://mailer:[redacted]@broker/%2f"
    assert own["sent"] == "Authorization: [redacted]"
    assert own["shown"] == "{'X-API-Key': '[redacted]', 'Accept': 'text/html'}"
    assert own["sent_line"] == "Cookie: [redacted]"
    assert own["plain"] == "see https://agency.example/login at 10:30"
    library = orjson.loads(library_line)
    assert (
        library["event"] == "Connection attempt to amqp://guest:[redacted]@127.0.0.1:5672/ failed"
    )
    assert library["logger"] == "aiormq.connection"
    for secret in (
        "pgS3cret",
        "amqpS3cret",
        "bearerS3cret",
        "keyS3cret",
        "sessionS3cret",
        "libS3cret",
    ):
        assert secret not in done.stdout
    assert done.stderr == ""


def test_an_exception_nothing_caught_in_a_thread_or_the_main_one_is_one_json_line() -> None:
    """Python's own hooks wrote the traceback to stderr as plain text, a line a frame."""
    script = textwrap.dedent(
        """
        import threading
        from libs.common.logging import configure_logging

        configure_logging("gateway")
        worker = threading.Thread(target=lambda: 1 / 0, name="exporter")
        worker.start()
        worker.join()
        raise RuntimeError("cannot reach postgresql://cp:mainS3cret@db/cp")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr == "", done.stderr
    in_thread, in_main = (orjson.loads(line) for line in done.stdout.splitlines())
    assert (in_thread["event"], in_thread["level"], in_thread["thread"]) == (
        "uncaught_exception",
        "error",
        "exporter",
    )
    assert in_thread["exception"].endswith("ZeroDivisionError: division by zero")
    assert (in_main["event"], in_main["level"]) == ("uncaught_exception", "critical")
    assert "postgresql://cp:[redacted]@db/cp" in in_main["exception"]
    assert "mainS3cret" not in done.stdout

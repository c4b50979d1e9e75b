"""Many invitations at once (the batch API, Import Clients): the rows from JSON or a CSV
file, each row's idempotency key, duplicates within the batch, and the batch cut into
pieces for the invitations service, answered in input order."""

from __future__ import annotations

import asyncio
import codecs
import csv
import io
import re
from dataclasses import dataclass, field
from typing import Any

from libs.common.email import InvalidEmail, email_key, email_or_none
from libs.common.errors import InvalidInput
from libs.common.nul import NUL_PROBLEM
from libs.common.text import has_lone_surrogate

from ..answers import BatchRowAnswer
from ..upstream import Invitations

MAX_ROWS = 10_000
# Records of a CSV file counted for the message of one over MAX_ROWS, at most (0.1 s).
COUNTED_AT_MOST = 100_000
# Rows per call to the invitations service: its limit. It writes a call's rows a few
# statements per 500 (0.6 s for 1,000 on a busy 2-core machine, bench/README.md), well
# inside upstream.BATCH_TIMEOUT; fewer calls spare the per-call look-ups.
PIECE = 1000
# Characters per call, and per cell: a piece of long messages goes in fewer rows, and a
# cell longer than any invitation takes is answered here, so a call's JSON (at most six
# bytes a character) stays under the body invitations accepts (8 MiB) whatever the rows.
PIECE_CHARS = 800_000
CELL_LIMIT = 65_536
PIECES_AT_ONCE = 2
# Rows checked between two looks at the pieces in flight (each look lets them go on).
CHECKED_BETWEEN_SENDS = 100
COLUMNS = ("email", "name", "personal_message", "sub_client")
# A spreadsheet saved in French, German and many other languages separates with ";".
DELIMITERS = (",", ";", "\t")
# A first line "sep=;" (which Excel writes and reads) names the separator.
SEP_LINE = re.compile(r"[\r\n]*sep=([,;\t|])[ \t]*(?:\r\n|\r|\n|$)", re.IGNORECASE)
# The email and name columns as people head them in the languages the pages speak (the
# Import Clients page reads its file with these too: views/imports.py).
COLUMN_ALIASES = {
    **dict.fromkeys(
        (
            "e_mail",
            "email_address",
            "e_mail_address",
            "e_mail_adresse",
            "email_adresse",
            "adresse_e_mail",
            "adresse_email",
            "courriel",
            "correo",
            "correo_electrónico",
            "correo_electronico",
        ),
        "email",
    ),
    "nom": "name",
    "nombre": "name",
}
_YES = {"true", "yes", "y", "1"}
_NO = {"false", "no", "n", "0"}


@dataclass(frozen=True)
class Row:
    email: str
    name: str | None = None
    personal_message: str | None = None
    sub_client: bool | None = None
    key: str | None = None
    # Why the row can't be sent before anyone looks at it (a CSV cell we can't read).
    problem: tuple[str, str] | None = None


def parse_csv(raw: bytes, charset: str | None = None) -> tuple[list[Row], list[str]]:
    """A CSV file's rows: UTF-8 with or without a BOM (or the ``charset`` its sender
    declares, as ``text/csv; charset=windows-1252``), a header row naming ``email`` and
    optionally ``name``, ``personal_message``, ``sub_client``, its cells separated by
    commas, or by the semicolons or tabs a spreadsheet saves in many languages (or as a
    first line ``sep=;`` says). A clear InvalidInput for a file that isn't one. Also the
    header's other column names, as the file spells them, which nothing reads (so the
    caller can say so)."""
    text = _decode(raw, charset)
    _read_cells_of_any_length(text)
    if "\x00" in text:
        raise InvalidInput("The file is not a CSV file.", code="not_csv")
    sep_line = SEP_LINE.match(text)
    first_line = 1
    if sep_line:  # Excel's "sep=;" first line names the separator
        delimiter, text = sep_line[1], text[sep_line.end() :]
        first_line += len(sep_line[0].splitlines())
    else:
        delimiter = _delimiter(text)
    records, count, counted = _records(text, delimiter, first_line)
    if not records:
        raise InvalidInput("The file is empty.", code="empty_file")
    header = [column(cell) for cell in records[0]]
    if "email" not in header:
        raise InvalidInput(
            "The file has no email column: its first row must name the columns"
            " (email, and optionally name, personal_message, sub_client).",
            code="no_email_column",
        )
    body = records[1:]
    check_size(count - 1, counted=counted)
    where = {name: header.index(name) for name in COLUMNS if name in header}
    read = set(where.values())
    unread = [
        given.strip() for at, given in enumerate(records[0]) if given.strip() and at not in read
    ]

    def cell(record: list[str], name: str) -> str | None:
        index = where.get(name)
        if index is None or index >= len(record):
            return None
        return record[index].strip() or None

    rows = []
    for record in body:
        flag = cell(record, "sub_client")
        sub_client, problem = _flag(flag)
        rows.append(
            Row(
                email=cell(record, "email") or "",
                name=cell(record, "name"),
                personal_message=cell(record, "personal_message"),
                sub_client=sub_client,
                problem=problem,
            )
        )
    return rows, unread


def _records(text: str, delimiter: str, first_line: int) -> tuple[list[list[str]], int, bool]:
    """The file's records that hold something, at most the header and MAX_ROWS rows and
    one more (the others are counted, not kept: 16 MiB of short lines were 1.9 GB of
    lists), how many there are, and whether that is all of them: counting stops past
    COUNTED_AT_MOST (8,000,000 short lines held the event loop 6.4 s). Or a not_csv
    refusal naming the line (the text's first is the file's ``first_line``) where the
    record that went wrong starts: a quoted value the file ends inside, or text after a
    closing quote. (The Import Clients page's parser, static/import.js, reads and refuses
    the same.)"""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True, delimiter=delimiter)
    records: list[list[str]] = []
    count = 0
    starts = first_line
    try:
        for record in reader:
            if any(cell.strip() for cell in record):
                count += 1
                if count <= MAX_ROWS + 2:
                    records.append(record)
                elif count > COUNTED_AT_MOST + 1:  # the header and COUNTED_AT_MOST rows
                    return records, count - 1, False
            starts = first_line + reader.line_num
    except csv.Error as exc:
        # The csv module's words when the file ends inside quotes.
        if str(exc) == "unexpected end of data":
            why = f"a quoted value on line {starts:,} never ends"
        else:
            why = f"line {starts:,} has a quote inside a value"
        raise InvalidInput(f"The file is not a CSV file: {why}.", code="not_csv") from None
    return records, count, True


def _read_cells_of_any_length(text: str) -> None:
    """A cell of any length is a verdict on its row (_rejection, CELL_LIMIT), never a
    refusal of the file: the csv module refuses a cell over its limit (131,072 characters
    by default, "field larger than field limit"), which read as a quote gone wrong, or a
    500 in the header. No cell of ``text`` is longer than ``text``, whose size the body
    limit bounds. The limit is the process's: only ever raised."""
    if len(text) > csv.field_size_limit():
        csv.field_size_limit(len(text))


def _decode(raw: bytes, charset: str | None) -> str:
    declared = None if charset is None or _is_utf8(charset) else charset
    said = f"{declared} text" if declared else "UTF-8 text"
    not_that = InvalidInput(
        f"The file is not {said}. Save it as CSV UTF-8 and try again.", code="invalid_encoding"
    )
    try:
        text = raw.decode(declared or "utf-8-sig")
    except LookupError:
        raise InvalidInput(
            f"The charset {declared!r} is not one we know. Send the file as UTF-8.",
            code="invalid_encoding",
        ) from None
    except UnicodeDecodeError:
        raise not_that from None
    # UTF-7 or unicode_escape can spell half a UTF-16 pair, which no text column takes.
    if declared and has_lone_surrogate(text):
        raise not_that
    return text


def _is_utf8(charset: str) -> bool:
    try:
        return codecs.lookup(charset).name in {"utf-8", "utf-8-sig"}
    except LookupError:
        return False


def column(cell: str) -> str:
    """A header cell's column: ``Personal Message``, ``sub-client`` and ``E-Mail`` name
    personal_message, sub_client and email; ``Courriel`` or ``Nom`` (COLUMN_ALIASES) email and
    name."""
    name = cell.strip().lower().replace(" ", "_").replace("-", "_")
    return COLUMN_ALIASES.get(name, name)


def _delimiter(text: str) -> str:
    """The separator that makes the first row name an email column: a comma, else a
    semicolon or a tab (a comma when none does, so the file is refused for its header)."""
    first = next((line for line in io.StringIO(text, newline="") if line.strip()), "")
    for delimiter in DELIMITERS:
        header = next(csv.reader([first], delimiter=delimiter), [])
        if "email" in (column(cell) for cell in header):
            return delimiter
    return ","


def _flag(value: str | None) -> tuple[bool | None, tuple[str, str] | None]:
    if value is None:
        return None, None
    if value.lower() in _YES:
        return True, None
    if value.lower() in _NO:
        return False, None
    return None, ("invalid_sub_client", "sub_client must be true or false.")


def check_size(count: int, *, counted: bool = True) -> None:
    """``counted``: False when ``count`` is where counting stopped (more follow)."""
    if count == 0:
        raise InvalidInput("There are no invitations to send.", code="empty_file")
    if count > MAX_ROWS:
        has = f"{count:,}" if counted else f"more than {count:,}"
        raise InvalidInput(
            f"At most {MAX_ROWS:,} invitations at once; this has {has}.", code="too_many_rows"
        )


def row_key(row: Row, number: int, request_key: str | None) -> str | None:
    """A row's own key, else the request's key and the row's place in it."""
    if row.key is not None:
        return row.key
    return f"{request_key}#{number}" if request_key is not None else None


async def send(
    invitations: Invitations,
    portal_id: str,
    rows: list[Row],
    *,
    request_key: str | None,
    invited_by: str,
    dry_run: bool,
    locale: str | None = None,
) -> list[BatchRowAnswer]:
    """One result per row, in input order (rows numbered from 1)."""
    results: dict[int, BatchRowAnswer] = {}
    seen = _Seen()
    # Two pieces in flight: one is written while the next is checked, so the services
    # and PostgreSQL work side by side (the rows of different pieces are different
    # people, and invitations redoes a piece row by row if two writers ever meet).
    gate = asyncio.Semaphore(PIECES_AT_ONCE)
    sends: list[asyncio.Future[None]] = []

    async def send_piece(piece: list[tuple[int, dict[str, Any]]]) -> None:
        async with gate:
            answer = await invitations.invite_batch(
                {
                    "portal_id": portal_id,
                    "invited_by": invited_by,
                    "dry_run": dry_run,
                    "rows": [item for _, item in piece],
                    **({"locale": locale} if locale else {}),
                }
            )
        for (number, _), result in zip(piece, answer["results"], strict=True):
            results[number] = {**result, "row": number}

    try:
        piece: list[tuple[int, dict[str, Any]]] = []
        chars = 0
        for number, row in enumerate(rows, start=1):
            rejected = _rejection(number, row, seen)
            if rejected is not None:
                results[number] = rejected
                continue
            piece.append((number, _item(number, row, request_key)))
            chars += _chars(row)
            if len(piece) == PIECE or chars >= PIECE_CHARS:
                sends.append(asyncio.ensure_future(send_piece(piece)))
                piece, chars = [], 0
                # A refusal (the portal is gone) ends the checking.
                if any(send.done() and send.exception() is not None for send in sends):
                    break
            if number % CHECKED_BETWEEN_SENDS == 0:
                # The pieces in flight go out and come back while the next is checked.
                await asyncio.sleep(0)
        else:
            if piece:
                sends.append(asyncio.ensure_future(send_piece(piece)))
        await asyncio.gather(*sends)
    except BaseException:
        # The first refusal answers the request as it is (a TaskGroup would wrap it);
        # the pieces not sent yet are not sent. A retry with the same key answers the
        # rows already written as before.
        for send in sends:
            send.cancel()
        raise
    return [results[number] for number in range(1, len(rows) + 1)]


@dataclass
class _Seen:
    """The first row of each address and of each row key in the batch so far."""

    emails: dict[str, int] = field(default_factory=dict)
    keys: dict[str, int] = field(default_factory=dict)


# A cell too long for any invitation: the column's reason, and its words.
_TOO_LONG = {
    "email": (InvalidEmail.code, InvalidEmail("too long").message),
    "name": ("name_too_long", "The name is far too long ({length:,} characters)."),
    "personal_message": (
        "personal_message_too_long",
        "The Personal Message is far too long ({length:,} characters).",
    ),
}


# A JSON row's text holding NUL, which no invitation can store: its column, in words.
_TEXT_COLUMNS = {
    "email": "The email",
    "name": "The name",
    "personal_message": "The Personal Message",
}


def _rejection(number: int, row: Row, seen: _Seen) -> BatchRowAnswer | None:
    """The row's rejection before it goes to invitations: a problem found while reading
    the file, a cell longer than any invitation takes, a key an earlier row holds, or the
    same person as an earlier row (``seen``)."""
    if row.problem is not None:
        code, message = row.problem
        return _rejected(number, row.email, code, message)
    for name, (code, words) in _TOO_LONG.items():
        value = getattr(row, name)
        if value is not None and len(value) > CELL_LIMIT:
            return _rejected(number, row.email, code, words.format(length=len(value)))
    for name, column_words in _TEXT_COLUMNS.items():
        value = getattr(row, name)
        if value is not None and "\x00" in value:
            return _rejected(
                number, row.email, "invalid_character", f"{column_words} {NUL_PROBLEM}."
            )
    if row.key is not None:
        held = seen.keys.setdefault(row.key, number)
        if held != number:
            return _rejected(
                number, row.email, "idempotency_key_reused", f"This key is already on row {held}."
            )
    address = email_or_none(row.email)
    if address is None:
        return None  # invitations says why
    # The same person twice in one batch: the first row invites, the rest say so
    # (compared as invitations and the database's unique index compare them).
    earlier = seen.emails.setdefault(email_key(address), number)
    if earlier == number:
        return None
    return _rejected(number, row.email, "duplicate", f"This email is already on row {earlier}.")


def _chars(row: Row) -> int:
    return len(row.email) + len(row.name or "") + len(row.personal_message or "")


def _item(number: int, row: Row, request_key: str | None) -> dict[str, Any]:
    """The row as invitations takes it."""
    item: dict[str, Any] = {"email": row.email}
    for name in ("name", "personal_message", "sub_client"):
        value = getattr(row, name)
        if value is not None:
            item[name] = value
    key = row_key(row, number, request_key)
    if key is not None:
        item["idempotency_key"] = key
    return item


def _rejected(number: int, email: str, reason: str, message: str) -> BatchRowAnswer:
    return {
        "row": number,
        "email": email,
        "status": "rejected",
        "reason": reason,
        "message": message,
    }

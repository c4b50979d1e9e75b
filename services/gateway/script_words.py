"""The words the page scripts write (static/app.js, static/import.js), in the page's
language (issue 17).

A page carries them translated, as data: base.html's ``<meta id="words" content='{json}'>``
(an attribute, never a script element, so no inline script of any type is on a page),
which app.js's ``ClientPress.words`` reads. The keys are the English messages, so a
script shows the English when a key is missing; ``{name}`` placeholders are filled in by
the script (numbers in the page language's format).
"""

from __future__ import annotations

from collections.abc import Iterable

import jinja2

from .i18n import N_, gettext

# static/app.js, on every page: the user pickers' filter box and the lists' "Select all".
APP = (
    N_("Type part of an email"),
    N_("Filter by email"),
    N_("Select all"),
)

# static/import.js, the Import Clients page (templates/admin/import.html).
IMPORT = (
    # The file
    N_("The file is not a CSV file. Choose a .csv file."),
    N_("The file is not a CSV file."),
    N_("The file is not a CSV file: a quoted value on line {line} never ends."),
    N_("The file is not a CSV file: line {line} has a quote inside a value."),
    N_("The file is not UTF-8 text. Save it as CSV UTF-8 and try again."),
    N_("The file is empty."),
    N_(
        "The file has no email column: its first row must name the columns (email, and"
        " optionally name, personal_message, sub_client)."
    ),
    N_("The file has no rows under its header."),
    N_("The file has {count} rows; at most {max} can be imported at once."),
    N_("sub_client must be true or false."),
    # The server
    N_("The server answered {status}."),
    N_("The server could not be reached."),
    # What the page is doing
    N_("Reading {name}…"),
    N_("Checking {count} rows…"),
    N_("{done} of {total} sent"),
    # The preview: what will happen to each row, and in all
    N_("Will invite"),
    N_("Will resend a pending invitation"),
    N_("Already has access"),
    N_("Duplicate in the file: {message}"),
    N_("This email is already on row {row}."),
    N_("Invalid email: {message}"),
    # The batch API's (English) message for such a row (libs/common/email.InvalidEmail)
    N_("Enter a single valid email address, like name@example.com."),
    N_("Will not invite: {reason}"),
    N_(
        "{rows} rows: {invite} will be invited, {resend} pending invitations will be resent,"
        " {skipped} will not be invited."
    ),
    N_("Columns not read: {columns}. Only email, name, personal_message and sub_client are read."),
    # The results
    N_("Invited"),
    N_("Resent"),
    N_("Not invited"),
    N_(
        "Not sent: {error} Select Send Invitations again to send the rest; rows already sent"
        " are not sent twice."
    ),
    N_("Done: {invited} invited, {resent} resent, {skipped} not invited."),
)

GROUPS: dict[str, tuple[str, ...]] = {"app": APP, "import": IMPORT}


def translated(*groups: str) -> dict[str, str]:
    """English message → its words in the language of the page being rendered."""
    messages: Iterable[str] = (m for group in groups for m in GROUPS[group])
    return {message: gettext(message) for message in messages}


def install(env: jinja2.Environment) -> None:
    """``script_words("app", "import")`` in templates (base.html's words block)."""
    env.globals["script_words"] = translated

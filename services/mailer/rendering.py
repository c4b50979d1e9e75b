"""Turns a delivery into an email: jinja2 templates (autoescaped HTML, plain text,
subject) and the MIME message with both parts."""

from __future__ import annotations

import binascii
import email.utils
import functools
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import Header
from pathlib import Path
from zoneinfo import ZoneInfo

import jinja2
import markupsafe
from babel.dates import format_date, format_time
from babel.support import NullTranslations

from libs.common.email import ascii_address
from libs.common.i18n import DEFAULT_LANGUAGE, N_, Catalogues, is_language
from libs.common.logging import get_logger
from libs.common.settings import LOCAL_HOSTS

from .branding.domain import Branding
from .domain import InvalidContext

log = get_logger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
# The built-in templates' translations (services/mailer/locale/<lang>/LC_MESSAGES/*.po).
CATALOGUES = Catalogues(Path(__file__).parent / "locale")

# What each template needs from the mail job's context; links must be http(s).
REQUIRED: dict[str, tuple[str, ...]] = {
    "invitation": ("accept_url", "portal_title", "site_name", "expires_at"),
    "invitation_reminder": ("accept_url", "portal_title", "site_name", "expires_at"),
    "staff_invitation": ("accept_url", "site_name", "expires_at", "role_name"),
    "password_reset": ("reset_url", "site_name", "expires_at"),
}
LINKS = ("accept_url", "reset_url")


# The role names a staff invitation's ``role_name`` holds (in English, as its producer
# writes them), put in the email's language when it is rendered.
ROLE_NAMES = frozenset({N_("Administrator"), N_("Staff"), N_("Client")})
# Spelled out here rather than by strftime, whose month names follow the process locale.
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str
    # The email's language: its Content-Language header.
    language: str = DEFAULT_LANGUAGE


# Every file a template may consist of; an override directory holds any of them.
TEMPLATE_FILES = (
    "layout.html",
    "button.html",
    *(f"{name}{part}" for name in REQUIRED for part in (".subject.txt", ".txt", ".html")),
)
MAX_ERROR_DETAIL = 300


def new_environment(
    override_dir: Path | None = None, translations: NullTranslations | None = None
) -> jinja2.Environment:
    """The built-in templates; with ``override_dir``, its files first (an override may
    extend or include the built-in ones it doesn't replace: layout.html, button.html).
    ``translations``: the language's catalogue, for ``{% trans %}`` and ``_()`` (English,
    the msgids, without one)."""
    loader: jinja2.BaseLoader = jinja2.FileSystemLoader(TEMPLATES)
    if override_dir is not None:
        loader = jinja2.ChoiceLoader([jinja2.FileSystemLoader(override_dir), loader])
    env = jinja2.Environment(
        loader=loader,
        extensions=["jinja2.ext.i18n"],
        # Every value comes from outside (portal titles, names): escape all HTML output.
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,  # templates ship with the release: no stat per email
    )
    env.install_gettext_translations(  # type: ignore[attr-defined]
        translations or NullTranslations(), newstyle=False
    )
    env.filters["bdi"] = bdi
    return env


def bdi(value: object) -> markupsafe.Markup:
    """A name or title in a sentence of the HTML part, isolated: a right-to-left one
    (Arabic, Hebrew) can't pull the words and punctuation around it into its own order."""
    text = str(value)
    return markupsafe.Markup("<bdi>%s</bdi>") % text if text else markupsafe.Markup()


def expiry_in_words(
    value: str, language: str = DEFAULT_LANGUAGE, time_zone: str = "UTC"
) -> tuple[str, str]:
    """ISO timestamp → ("9 December 2026", "14:05 UTC"), in the time zone (the branding's)
    and, for another language than English, as Babel writes a date in it ("9. Dezember
    2026", "15:05 Europe/Berlin")."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidContext("expires_at is not an ISO 8601 timestamp") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        zone = ZoneInfo(time_zone)
    except (ValueError, KeyError):
        zone, time_zone = ZoneInfo("UTC"), "UTC"
    moment = moment.astimezone(zone)
    if language == DEFAULT_LANGUAGE:
        day = f"{moment.day} {MONTHS[moment.month - 1]} {moment.year}"
    else:
        day = format_date(moment, format="long", locale=language)
    return day, f"{format_time(moment, 'HH:mm', locale=language)} {time_zone}"


# The accent of buttons and links when Settings → Branding sets none.
DEFAULT_ACCENT = "#2563eb"
LOGO_PATH = "/branding/logo"
# The emails the Reply-To of Settings → Branding goes on: those an invitee may answer.
REPLY_TO_TEMPLATES = frozenset({"invitation", "invitation_reminder", "staff_invitation"})


def with_branding(
    context: Mapping[str, str], branding: Branding, public_base: str
) -> dict[str, str]:
    """The job's context with the agency's branding: its name in place of the host the
    producer put in ``site_name`` (subjects and bodies), the accent, the footer, and the
    logo as an absolute link to the public site (versioned, so a new logo isn't hidden
    by a cached old one)."""
    values = dict(context)
    if branding.agency_name:
        values["site_name"] = branding.agency_name
    values["agency_name"] = branding.agency_name or values.get("site_name", "")
    values["accent_colour"] = branding.accent_colour or DEFAULT_ACCENT
    values["footer_text"] = branding.footer_text
    values["logo_url"] = (
        f"{public_base.rstrip('/')}{LOGO_PATH}?v={branding.logo_etag}" if branding.logo_etag else ""
    )
    width, height = logo_box(branding.logo_width, branding.logo_height)
    values["logo_width"], values["logo_height"] = str(width or ""), str(height)
    return values


# The logo in an email: this high, at most this wide, in proportion.
LOGO_HEIGHT = 40
LOGO_MAX_WIDTH = 240


def logo_box(width: int, height: int) -> tuple[int, int]:
    """The logo's size in the email, (0, LOGO_HEIGHT) when its own isn't known."""
    if width <= 0 or height <= 0:
        return 0, LOGO_HEIGHT
    if width * LOGO_HEIGHT <= LOGO_MAX_WIDTH * height:
        return max(1, round(width * LOGO_HEIGHT / height)), LOGO_HEIGHT
    return LOGO_MAX_WIDTH, max(1, round(height * LOGO_MAX_WIDTH / width))


def branded_from(mail_from: str, branding: Branding) -> str:
    """MAIL_FROM's address with the Agency Name as its display name, when one is set."""
    if not branding.agency_name:
        return mail_from
    _, address = email.utils.parseaddr(mail_from)
    # Quoted, not RFC 2047 encoded (formataddr): _sender encodes the name once, as long
    # as it needs; it used to encode these words a second time when they didn't fit on
    # one line, and the inbox showed "=?utf-8?q?Agence_Num=C3=A9rique…" as the sender.
    quoted = branding.agency_name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{address}>'


def render(
    env: jinja2.Environment,
    template: str,
    context: Mapping[str, str],
    *,
    language: str = DEFAULT_LANGUAGE,
    time_zone: str = "UTC",
) -> Rendered:
    required = REQUIRED.get(template)
    if required is None:
        raise InvalidContext(f"unknown template {template!r}")
    missing = [key for key in required if not context.get(key)]
    if missing:
        raise InvalidContext(f"missing {', '.join(missing)}")
    for key in LINKS:
        if key in context and not context[key].startswith(("https://", "http://")):
            raise InvalidContext(f"{key} is not an http(s) link")
    expires_on, expires_time = expiry_in_words(context["expires_at"], language, time_zone)
    values = {**context, "expires_on": expires_on, "expires_time": expires_time}
    values["language"] = language
    translate = env.globals.get("gettext")  # the language's, from install_gettext_translations
    if values.get("role_name") in ROLE_NAMES and callable(translate):
        values["role_name"] = str(translate(values["role_name"]))
    values.setdefault("invited_by", "")
    # Optional (issue 20): a Personal Message and the chosen Link Expiry.
    values.setdefault("personal_message", "")
    values.setdefault("expires_in_days", "")
    # Optional (issue 16): the invitee's name, for the greeting.
    values.setdefault("invitee_name", "")
    # Optional: "1" when the address already has an account (the link asks to log in).
    values.setdefault("has_account", "")
    # Branding (issue 17; with_branding): built-in look when a job is rendered without it.
    values.setdefault("agency_name", values["site_name"])
    values.setdefault("accent_colour", DEFAULT_ACCENT)
    values.setdefault("footer_text", "")
    values.setdefault("logo_url", "")
    values.setdefault("logo_width", "")
    values.setdefault("logo_height", str(LOGO_HEIGHT))
    # Optional (issue 20): one email for several portals names each of them.
    portals = portal_list(context.get("portal_titles", ""))
    values_with_list = {**values, "portals": portals}
    subject = env.get_template(f"{template}.subject.txt").render(values_with_list)
    return Rendered(
        # A subject is one header line whatever a portal title contains.
        subject=" ".join(subject.split()),
        text=env.get_template(f"{template}.txt").render(values_with_list),
        html=env.get_template(f"{template}.html").render(values_with_list),
        language=language,
    )


def portal_list(raw: str) -> list[str]:
    """``portal_titles``: a JSON list of the portals one email is for (two or more), or
    nothing (one portal, in ``portal_title``)."""
    if not raw:
        return []
    try:
        titles = json.loads(raw)
    except ValueError:
        raise InvalidContext("portal_titles is not a JSON list") from None
    if not isinstance(titles, list) or not all(isinstance(t, str) for t in titles):
        raise InvalidContext("portal_titles is not a list of titles")
    return titles if len(titles) > 1 else []


class Templates:
    """The built-in templates and, when MAIL_TEMPLATES_DIR is set, the overrides. A broken
    override (a syntax error, a variable the job doesn't have, anything it raises) is
    logged and the email goes out with the built-in templates: never unsent for it."""

    def __init__(self, override_dir: Path | None = None) -> None:
        self.builtin = new_environment()
        self.override: jinja2.Environment | None = None
        self.override_dir: Path | None = None
        # One environment per language (each with its catalogue installed), made once.
        self._builtin: dict[str, jinja2.Environment] = {DEFAULT_LANGUAGE: self.builtin}
        self._override: dict[str, jinja2.Environment] = {}
        if override_dir is None:
            return
        if not override_dir.is_dir():
            log.error("mail_templates_dir_missing", path=str(override_dir))
            return
        self.override_dir = override_dir
        self.override = new_environment(override_dir)
        self._override[DEFAULT_LANGUAGE] = self.override
        self._check(override_dir)

    def _environments(self, language: str) -> tuple[jinja2.Environment | None, jinja2.Environment]:
        if language not in self._builtin:
            self._builtin[language] = new_environment(None, CATALOGUES.get(language))
        if self.override_dir is not None and language not in self._override:
            self._override[language] = new_environment(self.override_dir, CATALOGUES.get(language))
        return self._override.get(language), self._builtin[language]

    def _check(self, directory: Path) -> None:
        """Say at start what is wrong with the overrides, rather than at the first email."""
        assert self.override is not None
        names = sorted(p.name for p in directory.iterdir() if p.is_file())
        unknown = [n for n in names if n not in TEMPLATE_FILES]
        if unknown:
            log.warning("mail_template_override_unknown", files=unknown, known=TEMPLATE_FILES)
        for name in names:
            if name in TEMPLATE_FILES:
                try:
                    self.override.get_template(name)
                except jinja2.TemplateError as exc:
                    log.error("mail_template_override_broken", file=name, error=_detail(exc))
        log.info("mail_templates_overridden", files=[n for n in names if n in TEMPLATE_FILES])

    def render(
        self,
        template: str,
        context: Mapping[str, str],
        *,
        language: str = DEFAULT_LANGUAGE,
        time_zone: str = "UTC",
    ) -> Rendered:
        if not is_language(language):
            language = DEFAULT_LANGUAGE
        override, builtin = self._environments(language)
        options = {"language": language, "time_zone": time_zone}
        if override is not None:
            try:
                return render(override, template, context, **options)
            except InvalidContext:
                raise  # the job's own fault: the built-in templates would refuse it too
            except Exception as exc:
                log.error(
                    "mail_template_override_failed",
                    template=template,
                    error_type=type(exc).__name__,
                    error=_detail(exc),
                    fallback="built-in",
                )
        return render(builtin, template, context, **options)


def _detail(exc: Exception) -> str:
    """What is wrong, for the log: the file and line of a syntax error, the message of
    anything else (names and types, not the job's values)."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        text = f"{exc.name or exc.filename}:{exc.lineno}: {exc.message}"
    else:
        text = str(exc)
    return " ".join(text.split())[:MAX_ERROR_DETAIL]


CRLF = "\r\n"
# A header line longer than this is folded (RFC 5322's "should").
MAX_HEADER_LINE = 78


@dataclass(frozen=True)
class Email:
    """A message ready for SMTP: the envelope and the bytes of the message."""

    sender: str
    to: str
    data: bytes

    @property
    def utf8(self) -> bool:
        """An internationalised address: the server must take SMTPUTF8, and the address
        headers are UTF-8 as they stand (RFC 6532), not RFC 2047 words, which no mail
        client reads as an address."""
        return not (self.sender + self.to).isascii()

    def in_ascii(self) -> Email | None:
        """The same message for a server without SMTPUTF8: internationalised domains in
        their ASCII form, in the envelope and the To header; None when a local part isn't
        ASCII (only SMTPUTF8 carries it)."""
        sender, to = ascii_address(self.sender), ascii_address(self.to)
        if sender is None or to is None:
            return None
        data = self.data.replace(_to_line(self.to).encode(), _to_line(to).encode(), 1)
        return Email(sender=sender, to=to, data=data)


def _to_line(to: str) -> str:
    # An address is written as it is: ASCII, or UTF-8 under SMTPUTF8 (Email.utf8).
    return f"To: {to}\r\n"


def _header(name: str, value: str, *, words: bool = True) -> str:
    """One header line, folded: plain short ASCII as it is, anything else RFC 2047
    encoded (or folded at spaces) in lines of at most 78 characters. ASCII with a word
    too long for a line (a portal title without a space) is RFC 2047 encoded too, the
    only way to split it; ``words=False`` for a value holding an address, which must
    stay as it is (the caller encodes its display name: _sender)."""
    # ASCII that reads as an RFC 2047 word ("=?utf-8?q?…?="), a portal title so written,
    # would be shown decoded: another text than the one given. Encoded, it shows as is.
    literal = words and "=?" in value
    if value.isascii() and not literal and len(name) + len(value) + 2 <= MAX_HEADER_LINE:
        return f"{name}: {value}\r\n"
    charset = "us-ascii" if value.isascii() and not literal else "utf-8"
    folded = Header(value, charset, header_name=name).encode(linesep=CRLF)
    if words and charset == "us-ascii" and _too_long(f"{name}: {folded}"):
        folded = Header(value, "utf-8", header_name=name).encode(linesep=CRLF)
    return f"{name}: {folded}\r\n"


def _too_long(lines: str) -> bool:
    return any(len(line) > MAX_HEADER_LINE for line in lines.split(CRLF))


def _quoted_printable(body: str) -> bytes:
    """UTF-8, quoted-printable in lines of at most 76 characters, CRLF line ends
    (binascii's encoder; "=" is always escaped, so a boundary with "=_" never occurs)."""
    text = body.replace("\r\n", "\n").replace("\n", "\r\n")
    return binascii.b2a_qp(text.encode("utf-8"), istext=True)


def is_public_domain(domain: str) -> bool:
    """A domain the world can resolve: not this machine's (localhost, an address of it)
    nor a single label (``mailer``, a container's name)."""
    domain = domain.lower().strip("[]")
    return (
        "." in domain
        and domain not in LOCAL_HOSTS
        and not domain.endswith((".localhost", ".localdomain"))
        and not domain.replace(".", "").isdigit()
    )


@functools.lru_cache(maxsize=64)
def _sender(mail_from: str) -> tuple[str, str, str]:
    """The From line, the envelope sender and its domain: the same for every email of one
    branding, so parsed once (it was 3 % of the mailer's CPU)."""
    name, sender = email.utils.parseaddr(mail_from)
    from_line = _header(
        "From", email.utils.formataddr((name, sender), charset="utf-8"), words=False
    )
    if name and (_too_long(from_line) or "=?" in name):
        # A display name with a word longer than a line: RFC 2047 words split it. One
        # that reads as such a word already ("=?utf-8?q?…?="), encoded too, is shown as
        # typed rather than decoded.
        encoded = Header(name, "utf-8", maxlinelen=60).encode(linesep=CRLF)
        from_line = _header("From", f"{encoded.replace(CRLF + ' ', ' ')} <{sender}>", words=False)
    return from_line, sender, sender.rpartition("@")[2] or "localhost"


def build_message(
    rendered: Rendered,
    *,
    mail_id: uuid.UUID,
    to: str,
    mail_from: str,
    now: datetime,
    reply_to: str | None = None,
    site_host: str = "",
) -> Email:
    """A multipart/alternative message (plain text, then HTML), quoted-printable UTF-8,
    written straight to bytes. The stdlib's MIME classes and generator took about 0.5 ms
    an email (0.13 to build, 0.39 to flatten), an eighth of the mailer's CPU; these few
    lines of headers and two encoded parts take a fraction of that, and
    tests/mailer/test_rendering.py reads the result back with the stdlib's parser.
    Message-ID comes from the mail id, so a resent copy after a crash is recognisably the
    same message; its domain is MAIL_FROM's, or ``site_host`` (PUBLIC_URL's host) when
    MAIL_FROM's is this machine's (``localhost``), which filters count against a message."""
    from_line, sender, domain = _sender(mail_from)
    if not is_public_domain(domain) and is_public_domain(site_host):
        domain = site_host
    boundary = f"=_{mail_id.hex}"
    headers = [
        from_line,
        _to_line(to),
        f"Reply-To: {reply_to}\r\n" if reply_to else "",
        _header("Subject", rendered.subject),
        f"Date: {email.utils.format_datetime(now.astimezone(UTC))}\r\n",
        f"Message-ID: <{mail_id}@{domain}>\r\n",
        # Auto-responders answer none of them: RFC 3834's header, and Exchange's own.
        "Auto-Submitted: auto-generated\r\n",
        "X-Auto-Response-Suppress: OOF, AutoReply\r\n",
        f"Content-Language: {rendered.language}\r\n",
        "MIME-Version: 1.0\r\n",
        f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n',
    ]
    parts = [
        f"\r\n--{boundary}\r\n"
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode()
        + _quoted_printable(body)
        for body, subtype in ((rendered.text, "plain"), (rendered.html, "html"))
    ]
    data = "".join(headers).encode() + b"".join(parts) + f"\r\n--{boundary}--\r\n".encode()
    return Email(sender=sender, to=to, data=data)

"""Read HTML forms the way a person does: find a form by its button, fill fields by label."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)  # element id -> field name
    buttons: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # label text -> element id
    options: dict[str, dict[str, str]] = field(default_factory=dict)  # select -> text -> value

    def fill(self, by_label: dict[str, str]) -> dict[str, str]:
        data = dict(self.fields)
        for label, value in by_label.items():
            element_id = self.labels.get(label)
            assert element_id is not None, (
                f"no field labelled {label!r}; labels: {list(self.labels)}"
            )
            name = self.ids[element_id]
            data[name] = self.options.get(name, {}).get(value, value)
        return data


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self.labels: dict[str, str] = {}
        self._by_id: dict[str, Form] = {}
        self._enclosing: Form | None = None
        self._target: Form | None = None  # the form of the open select/button/option
        self._label_for: str | None = None
        self._label_text: list[str] = []
        self._button: list[str] | None = None
        self._select: str | None = None
        self._option: str | None = None
        self._option_text: list[str] = []
        self._textarea: tuple[Form, str, list[str]] | None = None

    def _owner(self, a: dict[str, str]) -> Form | None:
        # A control belongs to the form named by its form= attribute, else the enclosing one.
        return self._by_id.get(a.get("form", "")) or self._enclosing

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self._enclosing = Form(
                action=a.get("action", ""), method=a.get("method", "get").lower()
            )
            self.forms.append(self._enclosing)
            if a.get("id"):
                self._by_id[a["id"]] = self._enclosing
        elif tag == "label":
            self._label_for = a.get("for")
            self._label_text = []
        elif tag == "button":
            self._target = self._owner(a)
            self._button = []
        elif tag in {"input", "textarea", "select"}:
            form = self._owner(a)
            name = a.get("name")
            if form is None or not name:
                return
            if a.get("id"):
                form.ids[a["id"]] = name
            kind = a.get("type", "text")
            if tag == "input" and kind in {"checkbox", "radio"}:
                if "checked" in a:
                    form.fields[name] = a.get("value", "on")
            elif tag == "input" and kind == "submit":
                form.buttons.append(a.get("value", ""))
            elif tag == "select":
                self._target = form
                self._select = name
                form.fields.setdefault(name, "")
            elif tag == "textarea":
                self._textarea = (form, name, [])
            else:
                form.fields[name] = a.get("value", "")
        elif tag == "option" and self._target is not None and self._select:
            self._option = a.get("value", "")
            self._option_text = []
            if "selected" in a:
                self._target.fields[self._select] = self._option

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._enclosing = None
        elif tag == "label" and self._label_for:
            self.labels[" ".join("".join(self._label_text).split())] = self._label_for
            self._label_for = None
        elif tag == "button" and self._button is not None:
            if self._target is not None:
                self._target.buttons.append(" ".join("".join(self._button).split()))
            self._button = None
            self._target = None
        elif tag == "option" and self._option is not None and self._target and self._select:
            text = " ".join("".join(self._option_text).split())
            self._target.options.setdefault(self._select, {})[text] = self._option
            self._option = None
        elif tag == "select":
            self._select = None
            self._target = None
        elif tag == "textarea" and self._textarea is not None:
            form, name, text = self._textarea
            # A newline right after <textarea> is not part of its value (HTML parsing rule).
            value = "".join(text)
            form.fields[name] = value[1:] if value.startswith("\n") else value
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self._textarea[2].append(data)
        if self._label_for is not None:
            self._label_text.append(data)
        if self._button is not None:
            self._button.append(data)
        if self._option is not None:
            self._option_text.append(data)


def find_form(html: str, button: str) -> Form:
    parser = _Parser()
    parser.feed(html)
    for form in parser.forms:
        if button in form.buttons:
            # Labels may sit anywhere in the page; keep the ones pointing into this form.
            form.labels = {t: i for t, i in parser.labels.items() if i in form.ids}
            return form
    raise AssertionError(
        f"no form with a {button!r} button; buttons: {[f.buttons for f in parser.forms]}"
    )

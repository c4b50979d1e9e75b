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
        self._form: Form | None = None
        self._label_for: str | None = None
        self._label_text: list[str] = []
        self._button: list[str] | None = None
        self._select: str | None = None
        self._option: str | None = None
        self._option_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self._form = Form(action=a.get("action", ""), method=a.get("method", "get").lower())
            self.forms.append(self._form)
        elif tag == "label":
            self._label_for = a.get("for")
            self._label_text = []
        elif tag in {"input", "textarea", "select"} and self._form is not None:
            name = a.get("name")
            if not name:
                return
            if a.get("id"):
                self._form.ids[a["id"]] = name
            kind = a.get("type", "text")
            if tag == "input" and kind in {"checkbox", "radio"}:
                if "checked" in a:
                    self._form.fields[name] = a.get("value", "on")
            elif tag == "input" and kind == "submit":
                self._form.buttons.append(a.get("value", ""))
            elif tag == "select":
                self._select = name
                self._form.fields.setdefault(name, "")
            else:
                self._form.fields[name] = a.get("value", "")
        elif tag == "option" and self._form is not None and self._select:
            self._option = a.get("value", "")
            self._option_text = []
            if "selected" in a:
                self._form.fields[self._select] = a.get("value", "")
        elif tag == "button":
            self._button = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "label" and self._label_for:
            self.labels[" ".join("".join(self._label_text).split())] = self._label_for
            self._label_for = None
        elif tag == "button" and self._button is not None:
            if self._form is not None:
                self._form.buttons.append(" ".join("".join(self._button).split()))
            self._button = None
        elif tag == "select":
            self._select = None
        elif tag == "option" and self._option is not None and self._form and self._select:
            text = " ".join("".join(self._option_text).split())
            self._form.options.setdefault(self._select, {})[text] = self._option
            self._option = None

    def handle_data(self, data: str) -> None:
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

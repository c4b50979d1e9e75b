"""The portal editor's three-way merge (services/gateway/edits.py)."""

from __future__ import annotations

from services.gateway.edits import fingerprints, plan_edit

OPENED = {"title": "Acme", "slug": "acme", "content": "Hello\nthere", "status": "active"}


def test_a_field_left_as_shown_is_not_sent_so_a_change_saved_meanwhile_stays() -> None:
    now = {**OPENED, "title": "Acme Rebrand"}
    edit = plan_edit(fingerprints(OPENED), now, {**OPENED, "content": "Bye"})
    assert (edit.changes, edit.clashes) == ({"content": "Bye"}, [])


def test_a_field_both_changed_clashes_and_the_next_save_replaces_it() -> None:
    now = {**OPENED, "title": "Acme Group"}
    submitted = {**OPENED, "title": "Acme Ltd", "status": "pending"}
    edit = plan_edit(fingerprints(OPENED), now, submitted)
    assert edit.clashes == ["title"]
    again = plan_edit(edit.shown, now, submitted)
    assert (again.changes, again.clashes) == ({"title": "Acme Ltd", "status": "pending"}, [])


def test_the_same_change_made_twice_is_no_clash_and_nothing_to_save() -> None:
    now = {**OPENED, "status": "archived"}
    edit = plan_edit(fingerprints(OPENED), now, {**OPENED, "status": "archived"})
    assert (edit.changes, edit.clashes) == ({}, [])


def test_line_breaks_sent_as_crlf_are_the_same_content() -> None:
    edit = plan_edit(fingerprints(OPENED), OPENED, {**OPENED, "content": "Hello\r\nthere"})
    assert (edit.changes, edit.clashes) == ({}, [])


def test_a_slug_left_empty_is_not_among_the_fields_and_never_clashes() -> None:
    now = {**OPENED, "slug": "acme-2"}
    submitted = {k: v for k, v in OPENED.items() if k != "slug"}
    assert plan_edit(fingerprints(OPENED), now, submitted).clashes == []


def test_without_what_was_shown_every_differing_field_is_a_change() -> None:
    now = {**OPENED, "title": "Acme Rebrand"}
    for shown in ("", "garbage", "a.b"):
        edit = plan_edit(shown, now, {**OPENED, "content": "Bye"})
        assert edit.changes == {"title": "Acme", "content": "Bye"}
        assert edit.clashes == [] and edit.shown == fingerprints(now)

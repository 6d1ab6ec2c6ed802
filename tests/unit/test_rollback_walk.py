"""Rollback walks the fragment history back to the newest entry that passes the checks."""

from orchestrator.fragments import newest_passing
from orchestrator.httpdconf import FragmentRefused


def entries(tmp_path, *texts):
    made = []
    for number, text in enumerate(texts, 1):
        path = tmp_path / f"{number:06d}.conf"
        path.write_text(text)
        made.append(path)
    return made


def check_refusing(*bad):
    seen = []

    def check(text):
        seen.append(text)
        if text in bad:
            raise FragmentRefused(f"{text.strip()} fails", tenant="acme", step="trial")
    check.seen = seen
    return check


def test_the_newest_entry_that_passes_wins(tmp_path):
    history = entries(tmp_path, "a\n", "b\n", "c\n", "d\n")
    check = check_refusing("d\n", "c\n")
    entry, text, skipped = newest_passing(history, check)
    assert entry == history[1] and text == "b\n"
    assert skipped == [{"entry": "000004", "step": "trial", "reason": "d fails"},
                       {"entry": "000003", "step": "trial", "reason": "c fails"}]
    assert check.seen == ["d\n", "c\n", "b\n"]  # older entries are never checked


def test_nothing_passes(tmp_path):
    history = entries(tmp_path, "a\n", "b\n")
    entry, text, skipped = newest_passing(history, check_refusing("a\n", "b\n"))
    assert entry is None and text is None
    assert [s["entry"] for s in skipped] == ["000002", "000001"]


def test_the_newest_passing_needs_no_skip(tmp_path):
    history = entries(tmp_path, "a\n", "b\n")
    entry, _, skipped = newest_passing(history, check_refusing())
    assert entry == history[-1] and skipped == []

"""RunDirectoryHistory: replay from the event logs on disk, as the broker uses it after its
in-memory buffers (or the whole process) are gone."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from sstore_rundirs import event_line

from service.storage.history import RunDirectoryHistory, complete_lines


def append(path: Path, *lines: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        for line in lines:
            f.write(line)


def seqs(lines: object) -> list[int]:
    import json

    return [json.loads(line)["seq"] for line in lines]  # type: ignore[attr-defined]


def build(runs: Path) -> None:
    append(runs / "a" / "events.ndjson", event_line(1, "a"), event_line(9, "a"))
    append(runs / "a" / "r1" / "events.ndjson", *(event_line(s, "a", "r1") for s in (2, 3, 5)))
    append(runs / "a" / "r2" / "events.ndjson", *(event_line(s, "a", "r2") for s in (7, 6, 8)))
    append(runs / "b" / "events.ndjson", event_line(4, "b"))
    append(runs / "b" / "r3" / "events.ndjson", event_line(10, "b", "r3"))


def test_all_sessions_in_seq_order_with_exact_bytes(tmp_path: Path) -> None:
    build(tmp_path)
    lines = list(RunDirectoryHistory(tmp_path).events_after(0, None, None))
    assert seqs(lines) == list(range(1, 11))
    on_disk = b"".join(p.read_bytes() for p in tmp_path.rglob("events.ndjson"))
    assert all(line + b"\n" in on_disk for line in lines)


def test_filters_by_seq_session_and_run(tmp_path: Path) -> None:
    build(tmp_path)
    history = RunDirectoryHistory(tmp_path)
    assert seqs(history.events_after(5, None, None)) == [6, 7, 8, 9, 10]
    assert seqs(history.events_after(0, ["a"], None)) == [1, 2, 3, 5, 6, 7, 8, 9]
    assert seqs(history.events_after(0, ["b", "nobody"], None)) == [4, 10]
    assert seqs(history.events_after(2, None, "r1")) == [3, 5]
    assert seqs(history.events_after(0, ["b"], "r1")) == []
    assert seqs(history.events_after(10, None, None)) == []
    assert list(history.events_after(0, ["../a", ""], None)) == []
    assert list(history.events_after(0, None, "../r1")) == []
    assert list(RunDirectoryHistory(tmp_path / "missing").events_after(0, None, None)) == []


def test_torn_last_line_and_damaged_lines_are_skipped(tmp_path: Path) -> None:
    log = tmp_path / "a" / "r1" / "events.ndjson"
    append(log, event_line(1, "a", "r1"), b"not json\n", b"\n", event_line(3, "a", "r1"))
    torn = event_line(4, "a", "r1")[:-20]
    append(log, torn)
    history = RunDirectoryHistory(tmp_path)
    assert seqs(history.events_after(0, None, None)) == [1, 3]
    # The write completes: the event appears (the file grew, so it is read again).
    append(log, event_line(4, "a", "r1")[-20:])
    assert seqs(history.events_after(0, None, None)) == [1, 3, 4]


def test_new_events_are_seen_after_an_earlier_read(tmp_path: Path) -> None:
    build(tmp_path)
    history = RunDirectoryHistory(tmp_path)
    assert seqs(history.events_after(10, None, None)) == []
    append(tmp_path / "a" / "r1" / "events.ndjson", event_line(11, "a", "r1"))
    append(tmp_path / "c" / "r9" / "events.ndjson", event_line(12, "c", "r9"))
    assert seqs(history.events_after(10, None, None)) == [11, 12]
    assert seqs(history.events_after(0, ["a"], "r1")) == [2, 3, 5, 11]


def test_result_is_capped_to_the_newest_events(tmp_path: Path) -> None:
    append(
        tmp_path / "a" / "r1" / "events.ndjson", *(event_line(s, "a", "r1") for s in range(1, 31))
    )
    history = RunDirectoryHistory(tmp_path, max_events=10)
    assert seqs(history.events_after(0, None, None)) == list(range(21, 31))
    assert seqs(history.events_after(25, None, None)) == [26, 27, 28, 29, 30]


def test_duplicate_seq_is_returned_once(tmp_path: Path) -> None:
    append(tmp_path / "a" / "events.ndjson", event_line(1, "a"))
    append(
        tmp_path / "a" / "r1" / "events.ndjson", event_line(1, "a", "r1"), event_line(2, "a", "r1")
    )
    assert seqs(RunDirectoryHistory(tmp_path).events_after(0, None, None)) == [1, 2]


def test_complete_lines() -> None:
    assert complete_lines(b"") == []
    assert complete_lines(b"partial") == []
    assert complete_lines(b"a\nb\n") == [b"a", b"b"]
    assert complete_lines(b"a\n\n  \nb\nc") == [b"a", b"b"]


@settings(max_examples=40, deadline=None)
@given(
    placement=st.lists(
        st.tuples(st.sampled_from(["s1", "s2"]), st.sampled_from([None, "r1", "r2", "r3"])),
        min_size=0,
        max_size=40,
    ),
    shuffle_seed=st.randoms(use_true_random=False),
    after=st.integers(min_value=0, max_value=45),
    reads=st.integers(min_value=1, max_value=3),
)
def test_replay_equals_every_logged_event_above_after(
    tmp_path_factory: object,
    placement: list[tuple[str, str | None]],
    shuffle_seed: object,
    after: int,
    reads: int,
) -> None:
    """Wherever events were logged and in whatever order lines were appended to one file,
    the history is exactly the events above `after`, in seq order — on every repeated read."""
    import random

    rng: random.Random = shuffle_seed  # type: ignore[assignment]
    root = tmp_path_factory.mktemp("h")  # type: ignore[attr-defined]
    by_file: dict[Path, list[bytes]] = {}
    for seq, (sid, run_id) in enumerate(placement, start=1):
        path = root / sid / run_id / "events.ndjson" if run_id else root / sid / "events.ndjson"
        by_file.setdefault(path, []).append(event_line(seq, sid, run_id))
    for path, lines in by_file.items():
        rng.shuffle(lines)  # several threads may append to one log slightly out of order
        append(path, *lines)
    history = RunDirectoryHistory(root)
    expected = [s for s in range(1, len(placement) + 1) if s > after]
    for _ in range(reads):
        assert seqs(history.events_after(after, None, None)) == expected
    wanted_runs = {r for _, r in placement if r}
    for run_id in wanted_runs:
        run_expected = [
            s for s, (_, r) in enumerate(placement, start=1) if r == run_id and s > after
        ]
        assert seqs(history.events_after(after, None, run_id)) == run_expected


def test_symlinked_directories_are_not_read(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    append(outside / "r1" / "events.ndjson", event_line(1, "x", "r1"))
    append(outside / "events.ndjson", event_line(2, "x"))
    runs = tmp_path / "runs"
    (runs / "a").mkdir(parents=True)
    (runs / "x").symlink_to(outside)
    (runs / "a" / "r1").symlink_to(outside / "r1")
    history = RunDirectoryHistory(runs)
    assert list(history.events_after(0, None, None)) == []
    assert list(history.events_after(0, ["x"], None)) == []
    assert list(history.events_after(0, ["a"], "r1")) == []

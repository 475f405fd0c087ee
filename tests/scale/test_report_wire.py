"""The `reports` stream's entries, as both ends read and write them (`remote_wire`)."""

from __future__ import annotations

from service.runtime.remote_wire import ENCODER, StepReport, report_entry, report_lines


def _report(n: int) -> bytes:
    # A step's data may hold text with newlines: the JSON escapes them, the batch stays whole.
    return ENCODER.encode(StepReport(run_id="r-1", attempt="a1", worker="w0", type="step.progress",
                                     data={"step": f"s{n}", "message": "line one\nline two"}))  # fmt: skip


def test_a_batch_of_reports_is_one_entry_read_back_in_order() -> None:
    reports = [_report(n) for n in range(5)]
    entry = report_entry(reports)
    assert list(entry) == [b"rs"]
    assert report_lines(entry) == reports


def test_a_single_report_from_a_worker_of_the_earlier_release_is_still_read() -> None:
    one = _report(0)
    assert report_lines({b"r": one}) == [one]
    assert report_lines({}) == [] and report_lines(None) == []
    assert report_lines({b"other": b"x"}) == []

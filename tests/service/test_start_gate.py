"""`StartGate`: a run's step events wait for `run.started`, in order, in a bounded buffer."""

from __future__ import annotations

import threading
from functools import partial

from service.runtime.execution import StartGate


def test_held_events_come_out_in_order_when_the_gate_opens() -> None:
    out: list[int] = []
    gate = StartGate()
    for k in range(3):
        gate.emit(partial(out.append, k))
    assert out == []  # run.started is not out yet
    gate.open()
    assert out == [0, 1, 2]
    gate.emit(partial(out.append, 3))  # open: straight through
    gate.open()  # idempotent
    assert out == [0, 1, 2, 3]


def test_a_full_gate_makes_the_worker_wait_instead_of_holding_more() -> None:
    out: list[int] = []
    gate = StartGate(limit=2)
    worker = threading.Thread(target=lambda: [gate.emit(partial(out.append, k)) for k in range(3)])
    worker.start()
    worker.join(timeout=0.2)
    assert worker.is_alive() and out == []  # two held, the third waits
    gate.open()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert out == [0, 1, 2]

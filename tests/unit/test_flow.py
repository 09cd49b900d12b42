"""Reading flow control: reading resumes only when no named reason holds it paused."""

from __future__ import annotations

import itertools

import pytest

from swoolish.worker.flow import FlowControl, Reason


class Transport:
    """Counts the transport calls, as uvloop's would receive them."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0
        self.resumes = 0

    def pause_reading(self) -> None:
        assert not self.paused, "paused twice without a resume in between"
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        assert self.paused, "resumed while reading"
        self.paused = False
        self.resumes += 1


def test_one_reason_pauses_and_resumes_reading():
    transport = Transport()
    flow = FlowControl(transport)
    flow.pause(Reason.BACKPRESSURE)
    assert transport.paused and not flow.reading
    assert flow.reasons == [Reason.BACKPRESSURE]
    flow.resume(Reason.BACKPRESSURE)
    assert not transport.paused and flow.reading


def test_the_client_catching_up_does_not_resume_a_full_handler_queue():
    """The defect this object exists for: one cause ending resumed reading for all."""
    transport = Transport()
    flow = FlowControl(transport)
    flow.pause(Reason.HANDLERS)
    flow.pause(Reason.BACKPRESSURE)
    flow.resume(Reason.BACKPRESSURE)  # resume_writing: the client reads again
    assert transport.paused
    assert flow.holds(Reason.HANDLERS) and not flow.holds(Reason.BACKPRESSURE)
    flow.resume(Reason.HANDLERS)
    assert not transport.paused


def test_pausing_twice_for_one_reason_is_one_pause():
    transport = Transport()
    flow = FlowControl(transport)
    flow.pause(Reason.PIPELINE)
    flow.pause(Reason.PIPELINE)
    flow.resume(Reason.PIPELINE)
    assert not transport.paused and transport.pauses == 1 == transport.resumes


def test_resuming_a_reason_that_does_not_hold_changes_nothing():
    transport = Transport()
    flow = FlowControl(transport)
    flow.resume(Reason.MOVING)
    assert transport.resumes == 0
    flow.pause(Reason.MOVING)
    flow.resume(Reason.HANDLERS)
    assert transport.paused


@pytest.mark.parametrize("order", list(itertools.permutations(Reason)))
def test_reading_resumes_exactly_when_the_last_reason_ends(order):
    transport = Transport()
    flow = FlowControl(transport)
    for reason in Reason:
        flow.pause(reason)
    for i, reason in enumerate(order):
        flow.resume(reason)
        last = i == len(order) - 1
        assert transport.paused is not last
    assert transport.pauses == 1 == transport.resumes
    assert repr(flow) == "<FlowControl reading>"

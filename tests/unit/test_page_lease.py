"""PageLease: a scale-out page's lease renewed while its worker works the page."""

from __future__ import annotations

import threading

import pytest

from controller.errors import TransientError
from controller.rewrap.lease import PageLease

pytestmark = pytest.mark.unit

WAIT = 10.0  # seconds: only a broken lease keeper waits this long


class Renewals:
    """``renew`` as the ledger answers it, scripted: each call takes the next answer (True: renewed,
    False: no longer this worker's, an exception: the ledger failed); after the script, True."""

    def __init__(self, *answers: bool | Exception, announce_after: int) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.announce_after = announce_after
        self.reached = threading.Event()

    def __call__(self) -> bool:
        self.calls += 1
        if self.calls >= self.announce_after:
            self.reached.set()
        answer = self.answers.pop(0) if self.answers else True
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_the_lease_is_renewed_while_the_page_is_worked_and_no_more_once_it_is_done():
    renew = Renewals(announce_after=3)
    with PageLease(renew, 0.03, page="job/0") as lease:
        assert renew.reached.wait(WAIT)
    calls = renew.calls
    threading.Event().wait(0.1)  # ten more renewal periods
    assert renew.calls == calls  # stopped with the block
    assert lease.renewals == calls and not lease.lost


def test_a_failed_renewal_is_tried_again_at_the_next_turn():
    renew = Renewals(TransientError("ledger throttled"), TransientError("again"), announce_after=4)
    with PageLease(renew, 0.03, page="job/0") as lease:
        assert renew.reached.wait(WAIT)
    assert lease.renewals >= 2 and not lease.lost


def test_a_lease_taken_over_stops_the_renewals_and_is_reported_lost():
    renew = Renewals(True, False, announce_after=2)
    with PageLease(renew, 0.03, page="job/0") as lease:
        assert renew.reached.wait(WAIT)
        threading.Event().wait(0.1)
    assert renew.calls == 2
    assert lease.lost and lease.renewals == 1


def test_an_error_in_the_page_work_stops_the_renewals_too():
    renew = Renewals(announce_after=1)
    with pytest.raises(RuntimeError), PageLease(renew, 0.03, page="job/0"):
        assert renew.reached.wait(WAIT)
        raise RuntimeError("the worker failed")
    calls = renew.calls
    threading.Event().wait(0.1)
    assert renew.calls == calls

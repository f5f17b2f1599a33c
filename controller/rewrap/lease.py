"""A scale-out page's lease, kept alive while its worker works the page.

A page is claimed under a lease (CMK_CLAIM_LEASE_SECONDS) so that a crashed worker's page is taken up
again once the lease runs out. A live worker whose page takes longer than the lease (a throttled vault, a
slow account, hot blobs rewritten twice) must not lose it: another worker would take the page over and
work it beside this one (every write is ETag-conditional, so no blob suffers, but the work is done twice
and the first worker's result is dropped as superseded). So while the page is worked, a thread renews the
lease every third of its length; a crashed worker's thread dies with it, and its lease runs out as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType

from controller.errors import ControllerError
from controller.logs import log_record

log = logging.getLogger(__name__)

#: Renewals per lease length: two renewals may fail (the ledger briefly unreachable) before it runs out.
RENEWALS_PER_LEASE = 3


class PageLease:
    """``with PageLease(renew, lease_seconds, page=...)``: ``renew()`` every ``lease_seconds / 3`` until the
    block ends. ``renew`` answers False when the page is no longer this worker's (taken over or recorded):
    renewing stops and ``lost`` is set. A failed renewal (ControllerError) is logged and tried again at the
    next turn; the lease runs out only if it keeps failing."""

    def __init__(self, renew: Callable[[], bool], lease_seconds: float, *, page: str) -> None:
        self._renew = renew
        self._every = lease_seconds / RENEWALS_PER_LEASE
        self._page = page
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, name=f"page-lease-{page}", daemon=True)
        self.renewals = 0
        self.lost = False

    def __enter__(self) -> PageLease:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def _keep(self) -> None:
        while not self._stop.wait(self._every):
            try:
                renewed = self._renew()
            except ControllerError as err:
                log_record(log, logging.WARNING, "could not renew a page's lease",
                           {"page": self._page, "error": type(err).__name__})
                continue
            if not renewed:
                self.lost = True
                log_record(log, logging.WARNING, "a page's lease was lost while it was worked", {"page": self._page})
                return
            self.renewals += 1

"""The vendors as the real sandbox servers (:mod:`src.sandbox`), over real HTTP on
127.0.0.1, for the simulation's small HTTP run: the same interface as
:class:`~.vendors.Vendors` (schedules, modes, journals, writes), served by the sandbox's
own fault injection and read from its own journals. Our real clients talk to it.

Each scheduled outcome is one sandbox fault for one request (``count=1``), queued in
order; a mode is a standing fault (503 for every request, or every other one). A hang
and a lost answer are served as 500s here, so no step waits in real time.
"""

from __future__ import annotations

import fnmatch
import itertools
from collections import deque
from collections.abc import Mapping
from typing import Any

from src.sandbox import Sandbox
from src.sandbox.base import Fault, FaultKind, SandboxServer

from .vendors import Meeting, Outcome, Request, Write, last_attempts_failed

__all__ = ["SandboxVendor", "SandboxVendors"]

PATTERNS = {
    "amplitude": "/api/2/*",
    "salesforce": "/services/data/*",  # not the OAuth token endpoint
    "hubspot": "/crm/*",
    "chilipiper": "/*",
}
KINDS: dict[Outcome, tuple[FaultKind, dict[str, Any]] | None] = {
    Outcome.OK: None,
    Outcome.SLOW: (FaultKind.SLOW, {"delay_ms": 20}),
    Outcome.E500: (FaultKind.SERVER_ERROR, {}),
    Outcome.E503: (FaultKind.SERVICE_UNAVAILABLE, {}),
    Outcome.RATE_LIMITED: (FaultKind.RATE_LIMITED, {"retry_after": 1.0}),
    Outcome.RATE_LIMITED_LONG: (FaultKind.RATE_LIMITED, {"retry_after": 10.0}),
    Outcome.HANG: (FaultKind.SERVER_ERROR, {}),
    Outcome.RESET: (FaultKind.RESET_MID_BODY, {}),
    Outcome.MALFORMED: (FaultKind.MALFORMED, {}),
    Outcome.LOST: (FaultKind.SERVER_ERROR, {}),
}


class SandboxVendor:
    def __init__(self, name: str, server: SandboxServer) -> None:
        self.name = name
        self.server = server
        self.pattern = PATTERNS[name]
        self._mode = "healthy"
        self._mode_fault: Fault | None = None
        self._scheduled: list[Fault] = []
        self.schedule: deque[Outcome] = deque()

    # -- faults ----------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        self._drop([self._mode_fault] if self._mode_fault else [])
        self._mode_fault = None
        self._mode = mode
        if mode == "down":
            self._mode_fault = self.server.inject(self.pattern, FaultKind.SERVICE_UNAVAILABLE)
        elif mode == "flapping":
            self._mode_fault = self.server.inject(self.pattern, FaultKind.FLAPPING, every=2)

    def arm(self, outcomes: list[Outcome]) -> None:
        """Queue one fault per request, in order (later injections match first)."""
        self._drop(self._scheduled)
        self._scheduled = []
        self.schedule = deque(outcomes)
        for outcome in reversed(outcomes):
            kind = KINDS[outcome]
            spec = kind or (FaultKind.SLOW, {"delay_ms": 0})  # OK: a fault that only passes
            self._scheduled.append(self.server.inject(self.pattern, spec[0], count=1, **spec[1]))

    def _drop(self, faults: list[Fault]) -> None:
        for fault in faults:
            if fault in self.server.faults:
                self.server.faults.remove(fault)

    def peek(self, n: int) -> list[Outcome]:
        left = [f for f in reversed(self._scheduled) if f in self.server.faults]
        out = list(itertools.islice(self.schedule, len(self.schedule) - len(left), None))[:n]
        seen = self._mode_fault.seen if self._mode_fault else 0
        while len(out) < n:
            seen += 1
            failing = self._mode == "down" or (self._mode == "flapping" and seen % 2 == 0)
            out.append(Outcome.E503 if failing else Outcome.OK)
        return out

    @property
    def healthy(self) -> bool:
        return self._mode == "healthy" and not any(f in self.server.faults for f in self._scheduled)

    # -- journals ----------------------------------------------------------------------------
    @property
    def journal(self) -> list[Request]:
        out: list[Request] = []
        search: Request | None = None  # Amplitude's last answered usersearch
        for e in self.server.journal:
            if not fnmatch.fnmatchcase(e.path, self.pattern):
                continue
            answered = e.fault in (None, "slow") and e.status is not None and e.status < 500
            req = Request(self.name, e.path, Outcome.OK if answered else Outcome.E503, e.at)
            # The sandbox's journal does not know our attempts: a useractivity is taken
            # as the second request of the attempt whose usersearch answered just before
            # (the stand-ins tag each request with its attempt instead).
            if e.path.endswith("/useractivity") and search is not None:
                req.attempt = search.attempt
                search = None
            elif e.path.endswith("/usersearch") and answered:
                req.attempt, search = object(), req
            out.append(req)
        return out

    def last_failed(self, n: int = 3, job: int | None = None) -> bool:
        if job is not None:
            return False  # the sandbox's journal does not know the sender: never judged
        return last_attempts_failed(self.journal, n)

    @property
    def writes(self) -> list[Write]:
        server: Any = self.server
        if self.name == "salesforce":
            return [
                Write(self.name, str(t.get("WhoId")), str(t.get("Subject", "")), 0.0)
                for t in server.tasks
            ]
        if self.name == "hubspot":
            return [
                Write(self.name, ",".join(n.contact_ids), n.properties.get("hs_note_body", ""), 0)
                for n in server.notes
            ]
        return []


class SandboxVendors:
    """The four sandbox servers behind :class:`SandboxVendor` views."""

    NAMES = ("amplitude", "salesforce", "hubspot", "chilipiper")

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.by_name = {n: SandboxVendor(n, sandbox.servers[n]) for n in self.NAMES}

    def __getitem__(self, name: str) -> SandboxVendor:
        return self.by_name[name]

    def set_schedule(self, schedules: Mapping[str, list[Outcome]]) -> None:
        for name, vendor in self.by_name.items():
            vendor.arm(list(schedules.get(name, ())))

    @property
    def meetings(self) -> list[Meeting]:
        # The sandbox books one meeting per time at most: the conversation is not known.
        return [
            (m.guest_email.casefold(), m.start_time, m.meeting_id, 0)
            for m in self.sandbox.chilipiper.meetings
            if m.status == "Active"
        ]

    def env(self) -> dict[str, str]:
        return self.sandbox.env()

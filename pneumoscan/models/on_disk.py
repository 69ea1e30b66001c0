"""Whether a bundle's files on disk are still those a process that runs for long (``serve``, ``listen``) loaded at
its start: their stat stamps, taken then, compared at each check, and the files read again only when one changed."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from pneumoscan.core.atomic import file_stamp
from pneumoscan.core.logs import redact
from pneumoscan.core.names import shown

from .card import CARD, CHECKSUM, load_card, verify_file

log = logging.getLogger(__name__)

# how long a caller waits for a check of a bundle's folder (serve's /healthz, listen's study) before it says that the
# folder does not answer and goes on: the readings come from the model in memory and need no file
BUNDLE_WAIT_S = 3.0
# how long a read of a changed bundle's files may go without a file read (each one hashed) before it counts as a
# drive that hangs (Check.unanswered: SILENT), not a slow one (READING): longer than BUNDLE_WAIT_S, so that a file
# that takes a few seconds to hash (a large or ensemble bundle, a slow drive) is not said as a hung drive
BUNDLE_READ_S = 30.0


class BundleState(StrEnum):
    """What a check of a bundle's files answers (None while they are those loaded at start), the word audit lines
    say; each caller words its own message for it. A check that has not answered within BUNDLE_WAIT_S is READING
    while its stat found a change whose files are being read, each read within BUNDLE_READ_S of the last, else
    SILENT (its stat, or a read, has not answered: a network drive that hangs); FAILED: the check itself raised."""

    DAMAGED = "damaged"
    REPLACED = "replaced"
    READING = "reading"
    SILENT = "silent"
    FAILED = "failed"


@dataclass
class Check:
    """One check of a bundle's files (:meth:`BundleOnDisk.checking`), in a thread of its own, which the callers
    that come while it runs share: its answer (:meth:`BundleOnDisk.checked`'s), when it began (``time.monotonic``)
    and whether its stat has answered with a change, so that the files are being read."""

    answer: Future[BundleState | None] = field(default_factory=Future)
    since: float = field(default_factory=time.monotonic)
    wait_s: float = field(default_factory=lambda: BUNDLE_WAIT_S)  # the bound of each caller's wait, as it began
    read_s: float = field(default_factory=lambda: BUNDLE_READ_S)  # the bound of a read without progress
    reading: bool = False
    progress: float = 0.0  # when the read last moved on (time.monotonic): its stat answered, or a file was read

    def moved(self) -> None:
        """The read moved on (a file read): the bound of :attr:`read_s` counts from now."""
        self.progress = time.monotonic()

    def remaining(self) -> float:
        """The seconds left of :attr:`wait_s` from the check's start: each caller's wait ends then, however many
        callers came while it ran."""
        return max(0.0, self.since + self.wait_s - time.monotonic())

    def unanswered(self) -> BundleState:
        """What the check is, once it has not answered within :attr:`wait_s`: :attr:`BundleState.READING` when its stat
        found a change and the files are being read, the last read within :attr:`read_s`; :attr:`BundleState.SILENT`
        when the stat, or a read, has not answered (a drive that hangs while its files are hashed)."""
        if self.reading and time.monotonic() - self.progress < self.read_s:
            return BundleState.READING
        return BundleState.SILENT


class BundleOnDisk:
    """Whether the bundle in ``directory`` holds the files it held when this was made. Damage or a removal after the
    start went unnoticed until a restart was refused (a restart loop under an orchestrator), and a bundle replaced (a
    new training, ``threshold --out`` in place) until a restart scored with other weights or thresholds. Each check
    stats the files; they are read again (each one hashed) only when a stamp changed. ``said``: what the process
    says of a change (:attr:`BundleState.DAMAGED`, :attr:`BundleState.REPLACED`), its warning with what changed
    (one a read that finds it, so one a change), and of a fault of the check itself (:attr:`BundleState.FAILED`),
    its error line with the fault (:meth:`outcome`); asked only once a change or a fault is found, so it may name
    the model loaded after this is made."""

    def __init__(self, directory: Path | str, said: Callable[[BundleState], str]) -> None:
        """The files as they are now, the baseline each check compares with: taken before the model is loaded
        (seconds for ONNX or an ensemble), so that a bundle replaced meanwhile is found
        (:func:`pneumoscan.inference.predict.check_built_from` compares the model's card with :attr:`card`), and
        :attr:`checksum` (``bundle.json``'s own) names the card read here. Refused (ValueError) when ``bundle.json``
        changed while it was read."""
        self.directory = Path(directory)
        before = file_stamp(self.directory / CARD)
        # the card as the files hold it (a Predictor's may carry the INT8 sidecar's threshold and figures instead)
        self.card = load_card(directory)
        self.checksum: str | None = json.loads((self.directory / CARD).read_bytes()).get(CHECKSUM)
        self.said = said
        self.names = [CARD, *self.card.files]
        self.seen = self._stamps()
        if self.seen[0] != before:  # its card and checksum may be of two versions of it
            raise ValueError(f"{self.directory / CARD} changed while it was read (a bundle being replaced): start "
                             "again once it is settled")
        self.change: BundleState | None = None
        self._lock = threading.Lock()
        self._checking: Check | None = None  # the check in progress
        self._failed: str | None = None  # the last fault of a check said (:meth:`outcome`)

    def _stamps(self) -> tuple[str | None, ...]:
        return tuple(file_stamp(self.directory / name) for name in self.names)

    def checking(self) -> Check:
        """The check in progress, or one started now; its answer is :meth:`checked`'s. It runs in a daemon thread of
        its own, which the callers that come meanwhile share, each bounding its own wait (:meth:`Check.remaining`): a
        folder on a network drive that hangs then holds one thread, not one a caller (a flood of /healthz probes,
        which need no key, or a study a minute), and no caller with it; a thread of an executor, hung on the folder,
        would hold the process's exit (Python joins those)."""
        with self._lock:
            if self._checking is None:
                self._checking = Check()
                threading.Thread(target=self._run, args=(self._checking,), name="pneumoscan-bundle-check",
                                 daemon=True).start()
            return self._checking

    def _run(self, check: Check) -> None:
        """The check of :meth:`checking`, in its thread, ended before its answer is given: a caller that has the answer
        and asks again (the next probe) gets a new check, never this one's answer again."""
        started = check.answer.set_running_or_notify_cancel()  # False: cancelled before it began
        result: BundleState | None = None
        error: BaseException | None = None
        try:
            result = self.checked(check) if started else None
        except BaseException as e:  # noqa: BLE001 - handed to the callers that wait for it
            error = e
        with self._lock:
            self._checking = None
        if started and error is not None:
            check.answer.set_exception(error)
        elif started:
            check.answer.set_result(result)

    def outcome(self, check: Check, answer: BundleState | None | Exception) -> BundleState | None:
        """What a caller answers of ``check`` once its wait for it ended, ``answer`` being the check's answer or the
        exception the wait ended with: the answer itself; :meth:`Check.unanswered` when the wait ran out
        (``TimeoutError``); :attr:`BundleState.FAILED` when the check itself raised (a fault of its own: ValueError
        and OSError of the files are its answers), with an error line, ``said`` of it and the fault, once a fault
        until a check answers again. The fault is redacted and kept to one line, as every error line that quotes an
        exception: it may quote a path with a patient's name in it. Synchronous, the one handling of both callers:
        ``serve`` awaits the check on its event loop, ``listen`` waits for it in the thread that scores a study; the
        fault last said is read and written under the lock, since ``listen`` calls this from several threads (two
        studies that saw one fault at once could say it twice)."""
        if isinstance(answer, TimeoutError):
            return check.unanswered()
        if isinstance(answer, Exception):
            why = shown(redact(str(answer)) or type(answer).__name__)
            with self._lock:
                new, self._failed = self._failed != why, why
            if new:  # said outside the lock: ``said`` is the caller's, and may take its time
                log.error("%s: %s", self.said(BundleState.FAILED), why)
            return BundleState.FAILED
        with self._lock:
            self._failed = None
        return answer

    def checked(self, check: Check | None = None) -> BundleState | None:
        """None while the files hold the bundle loaded at start; else :attr:`BundleState.DAMAGED` or
        :attr:`BundleState.REPLACED`. The files are read again (:meth:`changed`) only when a stamp changed since the
        last check, ``check`` (the one this answers) marked as reading them meanwhile, and moved on at each file."""
        stamps = self._stamps()
        if stamps != self.seen:
            if check is not None:
                check.reading = True
                check.moved()
            self.seen, self.change = stamps, self.changed(check)
        return self.change

    def changed(self, check: Check | None = None) -> BundleState | None:
        """:meth:`checked` by reading the files whatever their stamps say, each change found logged with what it is:
        the file and what is wrong with it, or the files whose digests differ (``bundle.json`` alone: a card
        re-thresholded or edited beside the same weights). ``check``, where one is reading, moved on at each file."""
        try:
            card = load_card(self.directory)
            for name in card.files:
                if check is not None:
                    check.moved()
                verify_file(self.directory, card, name)
        except (ValueError, OSError) as e:
            log.warning("%s: %s", self.said(BundleState.DAMAGED), e)
            return BundleState.DAMAGED
        if card != self.card:
            files = sorted(n for n in {*card.files, *self.card.files} if card.files.get(n) != self.card.files.get(n))
            what = f"{', '.join(files)} changed" if files else f"{CARD} changed, its weights the same"
            log.warning("%s (%s: %s)", self.said(BundleState.REPLACED), self.directory, what)
            return BundleState.REPLACED
        return None  # touched, or put back as it was

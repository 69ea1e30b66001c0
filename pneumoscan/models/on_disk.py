"""Whether a bundle's files on disk are still those a process that runs for long (``serve``, ``listen``) loaded at
its start: their stat stamps, taken then, compared at each check, and the files read again only when one changed."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from pneumoscan.core.atomic import file_stamp

from .card import CARD, load_card, verify_file

log = logging.getLogger(__name__)

# how long a caller waits for a check of a bundle's folder (serve's /healthz, listen's study) before it says that the
# folder does not answer and goes on: the readings come from the model in memory and need no file
BUNDLE_WAIT_S = 3.0


class BundleOnDisk:
    """Whether the bundle in ``directory`` holds the files it held when this was made. Damage or a removal after the
    start went unnoticed until a restart was refused (a restart loop under an orchestrator), and a bundle replaced (a
    new training, ``threshold --out`` in place) until a restart scored with other weights or thresholds. Each check
    stats the files; they are read again (each one hashed) only when a stamp changed. ``damaged`` and ``replaced``:
    what the process says of each, the answer of a check and, with what changed, its warning (one a read that finds
    it, so one a change)."""

    def __init__(self, directory: Path | str, damaged: str, replaced: str) -> None:
        # the card as the files hold it (a Predictor's may carry the INT8 sidecar's threshold and figures instead)
        self.directory, self.card = Path(directory), load_card(directory)
        self.damaged, self.replaced = damaged, replaced
        self.names = [CARD, *self.card.files]
        self.seen = self._stamps()
        self.change: str | None = None
        self._lock = threading.Lock()
        self._checking: tuple[Future[str | None], float] | None = None  # the check in progress, and its start

    def _stamps(self) -> tuple[str | None, ...]:
        return tuple(file_stamp(self.directory / name) for name in self.names)

    def checking(self) -> tuple[Future[str | None], float]:
        """The check in progress, or one started now, and when it began (``time.monotonic``); its answer is
        :meth:`checked`'s. It runs in a daemon thread of its own, which the callers that come meanwhile share, each
        bounding its own wait (:data:`BUNDLE_WAIT_S`): a folder on a network drive that hangs then holds one thread,
        not one a caller (a flood of /healthz probes, which need no key, or a study a minute), and no caller with it;
        a thread of an executor, hung on the folder, would hold the process's exit (Python joins those)."""
        with self._lock:
            if self._checking is None:
                answer: Future[str | None] = Future()
                self._checking = (answer, time.monotonic())
                threading.Thread(target=self._run, args=(answer,), name="pneumoscan-bundle-check", daemon=True).start()
            return self._checking

    def _run(self, answer: Future[str | None]) -> None:
        """The check of :meth:`checking`, in its thread, ended before its answer is given: a caller that has the answer
        and asks again (the next probe) gets a new check, never this one's answer again."""
        started = answer.set_running_or_notify_cancel()  # False: cancelled before it began
        result: str | None = None
        error: BaseException | None = None
        try:
            result = self.checked() if started else None
        except BaseException as e:  # noqa: BLE001 - handed to the callers that wait for it
            error = e
        with self._lock:
            self._checking = None
        if started and error is not None:
            answer.set_exception(error)
        elif started:
            answer.set_result(result)

    def checked(self) -> str | None:
        """None while the files hold the bundle loaded at start; else :attr:`damaged` or :attr:`replaced`. The files
        are read again (:meth:`changed`) only when a stamp changed since the last check."""
        stamps = self._stamps()
        if stamps != self.seen:
            self.seen, self.change = stamps, self.changed()
        return self.change

    def changed(self) -> str | None:
        """:meth:`checked` by reading the files whatever their stamps say, each change found logged with what it is:
        the file and what is wrong with it, or the files whose digests differ (``bundle.json`` alone: a card
        re-thresholded or edited beside the same weights)."""
        try:
            card = load_card(self.directory)
            for name in card.files:
                verify_file(self.directory, card, name)
        except (ValueError, OSError) as e:
            log.warning("%s: %s", self.damaged, e)
            return self.damaged
        if card != self.card:
            files = sorted(n for n in {*card.files, *self.card.files} if card.files.get(n) != self.card.files.get(n))
            what = f"{', '.join(files)} changed" if files else f"{CARD} changed, its weights the same"
            log.warning("%s (%s: %s)", self.replaced, self.directory, what)
            return self.replaced
        return None  # touched, or put back as it was

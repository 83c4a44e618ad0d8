"""The announcer: a strictly serial queue of announcements, played by aplay.

* One worker thread (``voice-<name>``) takes one announcement at a time,
  synthesizes it and plays it with the player command (by default
  ``aplay -q -D <device> <wav>``) and waits for the player to exit before
  it takes the next: two announcements never overlap.
* :meth:`Announcer.announce` never blocks (it is called from the asyncio loop).
* The same announcement (same ticket, counter and recall flag) asked for again
  within ``dedupe_s`` of the previous one is dropped: a board re-published, a
  button pressed twice.
* At most ``max_queue`` announcements wait.  When one more comes, the oldest
  waiting *first call* is dropped (a WARNING says which); a recall is kept
  over a first call, since a recall means the visitor has not come yet.
  When all that wait are recalls, the oldest recall goes.
* A player that does not finish within the announcement's length plus
  ``play_timeout_s`` is killed (a hung sound device must not stop the queue).
* :meth:`close` drops what waits, stops the player that runs and joins the
  worker.

Nothing here knows about MQTT or the board: the lobby role (edge/lobby.py)
decides what to announce.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from drivers.base import Closeable
from drivers.voice.synth import Synthesizer, VoiceError
from drivers.voice.text import Announcement

logger = logging.getLogger(__name__)

#: ``{device}`` and ``{wav}`` are replaced in each argument.
DEFAULT_COMMAND = ("aplay", "-q", "-D", "{device}", "{wav}")
#: A drop (full queue) is reported in health for this long.
DROP_WARNING_S = 60.0


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the player and everything it started (its own session)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # already gone
        pass


@dataclass(frozen=True)
class Played:
    """One announcement the worker finished with (history, for tests and status)."""

    announcement: Announcement
    started: float  # time.monotonic() when the player started (0 if it never did)
    ended: float
    duration_s: float  # of the WAV
    parts: tuple[str, ...]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class AnnouncerStatus:
    queued: int
    playing: Announcement | None
    played: int
    failed: int
    dropped: int
    deduped: int
    last_error: str | None


class Announcer(Closeable):
    """Announce calls one after another.

    Args:
        synthesizer: makes the WAVs (not closed by :meth:`close`: the caller owns it).
        command: the player; each argument may hold ``{device}`` and must
            somewhere hold ``{wav}``.
        device: the ALSA device (``aplay -D``), e.g. "default", "plughw:1,0", "null".
        max_queue: announcements that may wait (the one playing not counted), ≥ 1.
        dedupe_s: the same announcement again within this many seconds is dropped.
        play_timeout_s: slack over the WAV's length before a player is killed.
        on_change: called (from the worker thread or the caller) when the
            queue or the health may have changed; must not block.
        name: for thread names and logs (the device id).
    """

    def __init__(
        self,
        synthesizer: Synthesizer,
        *,
        command: Sequence[str] = DEFAULT_COMMAND,
        device: str = "default",
        max_queue: int = 5,
        dedupe_s: float = 5.0,
        play_timeout_s: float = 10.0,
        on_change: Callable[[], None] | None = None,
        name: str = "lobby",
    ) -> None:
        if not any("{wav}" in arg for arg in command):
            raise ValueError("the player command must contain {wav}")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self._lock = threading.Lock()
        self._closed = False
        self.synthesizer = synthesizer
        self.command = tuple(command)
        self.device = device
        self.max_queue = max_queue
        self.dedupe_s = dedupe_s
        self.play_timeout_s = play_timeout_s
        self.name = name
        self._on_change = on_change or (lambda: None)
        self._wake = threading.Condition(self._lock)
        self._queue: deque[Announcement] = deque()
        self._playing: Announcement | None = None
        self._proc: subprocess.Popen | None = None
        self._last: tuple[tuple, float] | None = None  # key, monotonic time it was accepted
        self._last_drop = -DROP_WARNING_S * 2
        self._last_error: str | None = None
        self._error_reason: str | None = None
        self.played = self.failed = self.dropped = self.deduped = 0
        #: The last 50 finished announcements, oldest first.
        self.history: deque[Played] = deque(maxlen=50)
        self._thread = threading.Thread(target=self._work, name=f"voice-{name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ caller side
    def announce(self, announcement: Announcement) -> bool:
        """Queue ``announcement``; False when it was dropped as a duplicate
        (or the announcer is closed).  Never blocks."""
        now = time.monotonic()
        dropped: Announcement | None = None
        with self._lock:
            if self._closed:
                return False
            if self._last is not None and self._last[0] == announcement.key and now - self._last[1] < self.dedupe_s:
                self.deduped += 1
                logger.info("%s: %s asked again within %.0f s: not repeated", self.name, announcement.describe(),
                            self.dedupe_s)
                return False
            self._last = (announcement.key, now)
            if len(self._queue) >= self.max_queue:
                victim = next((a for a in self._queue if not a.recall), self._queue[0])
                self._queue.remove(victim)
                dropped = victim
                self.dropped += 1
                self._last_drop = now
            self._queue.append(announcement)
            queued = len(self._queue)
            self._wake.notify()
        if dropped is not None:
            logger.warning("%s: announcement queue full (%d): dropped %s", self.name, self.max_queue,
                           dropped.describe())
        logger.info("%s: queued %s (%d waiting)", self.name, announcement.describe(), queued)
        self._changed()
        return True

    def status(self) -> AnnouncerStatus:
        with self._lock:
            return AnnouncerStatus(queued=len(self._queue), playing=self._playing, played=self.played,
                                   failed=self.failed, dropped=self.dropped, deduped=self.deduped,
                                   last_error=self._last_error)

    def health(self) -> tuple[str, str | None, str | None]:
        """(status, reason, message): the worst of the voice's capabilities, the
        last play and recent drops; the message always ends with the queue."""
        caps_status, caps_reason, caps_message = self.synthesizer.check().health()
        with self._lock:
            queue = f"queue {len(self._queue)}/{self.max_queue}, played {self.played}"
            error_reason, last_error = self._error_reason, self._last_error
            recent_drop = time.monotonic() - self._last_drop < DROP_WARNING_S
        if error_reason is not None:
            status, reason, message = "error", error_reason, last_error
        elif caps_status != "ok":
            status, reason, message = caps_status, caps_reason, caps_message
        elif recent_drop:
            status, reason, message = "warning", "queue_full", f"announcements dropped ({self.dropped} in all)"
        else:
            status, reason, message = "ok", None, None
        text = f"{message[:200 - len(queue) - 2]}; {queue}" if message else queue
        return status, reason, text

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing waits or plays (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._queue or self._playing is not None:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return not (self._queue or self._playing)
                self._wake.wait(min(left, 0.1))
        return True

    def _changed(self) -> None:
        try:
            self._on_change()
        except Exception:  # a listener must not stop the announcer
            logger.exception("%s: on_change failed", self.name)

    # ------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                item = self._queue.popleft()
                self._playing = item
            self._changed()
            try:
                self._announce(item)
            except Exception:  # a bug must not stop the lobby's voice for the day
                logger.exception("%s: announcing %s failed", self.name, item.describe())
            finally:
                with self._lock:
                    self._playing = None
                    self._wake.notify_all()
                self._changed()

    def _announce(self, item: Announcement) -> None:
        start = time.monotonic()
        try:
            made = self.synthesizer.synthesize(item)
        except VoiceError as exc:
            self._finished(item, start, 0.0, (), f"synthesis: {exc}", reason="synthesis_failed")
            return
        if made.problems:
            logger.warning("%s: %s announced without %s", self.name, item.describe(), ", ".join(made.problems))
        try:
            self._play(item, made.path, made.duration_s, tuple(made.parts))
        finally:
            made.path.unlink(missing_ok=True)

    def _play(self, item: Announcement, wav: Path, duration_s: float, parts: tuple[str, ...]) -> None:
        argv = [arg.replace("{device}", self.device).replace("{wav}", str(wav)) for arg in self.command]
        started = time.monotonic()
        with self._lock:
            if self._closed:
                return
            try:
                # Its own process group: a wrapper script's children are
                # stopped with it (and do not hold its stderr open).
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, start_new_session=True)
            except OSError as exc:
                proc = None
                error = f"cannot start {argv[0]}: {exc}"
            self._proc = proc
        if proc is None:
            self._finished(item, started, duration_s, parts, error, reason="player_missing")
            return
        logger.info("%s: announcing %s (%.1f s)", self.name, item.describe(), duration_s)
        try:
            _, err = proc.communicate(timeout=duration_s + self.play_timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            _, err = proc.communicate()
            self._finished(item, started, duration_s, parts,
                           f"{argv[0]} did not finish within {duration_s + self.play_timeout_s:.0f} s: killed",
                           reason="player_hung")
            return
        finally:
            with self._lock:
                self._proc = None
        if proc.returncode != 0:
            if self.closed:  # stopped by close()
                return
            tail = " / ".join(err.decode("utf-8", "replace").strip().splitlines()[-2:])[:150]
            self._finished(item, started, duration_s, parts, f"{argv[0]} exited with {proc.returncode}: {tail}",
                           reason="player_failed")
            return
        self._finished(item, started, duration_s, parts, None)

    def _finished(self, item: Announcement, started: float, duration_s: float, parts: tuple[str, ...],
                  error: str | None, *, reason: str | None = None) -> None:
        with self._lock:
            self.history.append(Played(item, started, time.monotonic(), duration_s, parts, error))
            if error is None:
                self.played += 1
                self._error_reason = self._last_error = None
            else:
                self.failed += 1
                self._error_reason, self._last_error = reason, error
        if error is not None:
            logger.error("%s: %s not announced: %s", self.name, item.describe(), error)

    def _close(self) -> None:
        with self._lock:
            self._queue.clear()
            proc = self._proc
            self._wake.notify_all()
        if proc is not None and proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
        self._thread.join(5.0)
        if self._thread.is_alive():
            logger.warning("%s: voice worker did not stop within 5 s", self.name)

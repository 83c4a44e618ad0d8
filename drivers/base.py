"""What every driver shares: an idempotent ``close()``, a ``closed`` property
and use as a context manager (the gpiozero ``Device`` habit)."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Self


class Closeable:
    """Mixin: subclasses set ``self._lock`` (a lock) and ``self._closed =
    False`` in their constructor and implement :meth:`_close`, which runs once,
    outside the lock (it may join threads that read the driver's properties)."""

    _lock: threading.Lock | threading.RLock
    _closed: bool

    def close(self) -> None:
        """Release the driver's resources.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._close()

    @property
    def closed(self) -> bool:
        """``True`` once :meth:`close` has been called."""
        with self._lock:
            return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _close(self) -> None:
        raise NotImplementedError

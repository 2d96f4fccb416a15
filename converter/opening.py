"""The layers of one merge, opened for reading: the helper pool, the staging directory,
and a :class:`~converter.layerstream.LayerReading` per layer, opened ahead of the merge.

Kept apart from the merge so that the opening can happen before the merge exists: a
plain ``rootfs convert SOURCE -o DIR`` opens its layers (and so starts the helpers
inflating them) while the command line is still being parsed (see
:mod:`converter.prestart`), and the merge then takes the opened layers over.
"""

from __future__ import annotations

from typing import Callable, Optional

from . import forking
from .image import Layer
from .inflate import Inflation, close_quietly, release_files, worth_detaching
from .layerstream import LayerReading, Limits
from .staging import Staging
from .workers import Workers

#: parse in-place layers in helpers: None decides per image (see :class:`Opening`); tests force it
PARSE_REMOTE: Optional[bool] = None
#: layers read ahead by threads, counting the one being applied; measured: more gave no
#: steady gain on 2 cores
AHEAD = 2


class Opening:
    """``layers`` opened as the merge will read them.  Whoever holds it calls
    :meth:`close` (the merge's :class:`~converter.merge.Plan` once it has taken it)."""

    def __init__(self, layers: list[Layer], *, verify: bool, limits: Limits, spool_dir: Optional[str],
                 stage_beside: Optional[str]) -> None:
        self.todo = layers
        self.verify = verify
        self.limits = limits
        self.spool_dir = spool_dir
        self.pool = Workers()
        # Parsing in a helper costs more CPU in all (entries are pickled there and rebuilt
        # here) but frees this process: worth it only while a helper would otherwise be
        # idle, i.e. when there are fewer layers to hash than helpers (a one-layer image:
        # the merge of 50k small files went from 0.40 to 0.33 s), and a loss when every
        # helper hashes (the 4-layer bench image: 0.80 -> 0.85 s).
        file_backed = sum(1 for layer in layers if layer.blob.region is not None)
        if PARSE_REMOTE is None:
            self.pool.parse_remote = not verify or file_backed < self.pool.size
        else:
            self.pool.parse_remote = PARSE_REMOTE
        self.staging = Staging(stage_beside) if stage_beside is not None and self.pool.forks else None
        #: the readings opened so far, in layer order
        self.readings: list[LayerReading] = []
        #: the inflated files the sinks will copy contents from (see LayerReading.keep_file)
        self.inflated: list[Inflation] = []

    def open_ahead(self, position: int) -> LayerReading:
        """The reading of layer ``position``, after opening the layers ahead of it so
        their hashing and inflating run while it is applied: every file-backed layer at
        once when helper processes do that work (they take the queued jobs in order, and
        none waits idle for the merge), else the next :data:`AHEAD` (threads compete for
        the GIL, and streams hold connections)."""
        pool, todo = self.pool, self.todo
        pool.hold()
        try:
            while len(self.readings) < len(todo):
                nxt = len(self.readings)
                if nxt >= position + AHEAD and not (pool.forks and todo[nxt].blob.region is not None):
                    break
                reading = LayerReading(todo[nxt], verify=self.verify, workers=pool, limits=self.limits,
                                       spool_dir=self.spool_dir, staging=self.staging)
                self.readings.append(reading)
                inflated = reading.keep_file()  # sinks copy contents out of inflated layers
                if inflated is not None:
                    self.inflated.append(inflated)
        finally:
            pool.release()
        return self.readings[position]

    def close(self, *, failed: bool = False) -> None:
        """Close the readings, stop the helpers, close the inflated files and remove the
        staging directory.  Idle helpers of a process that ends right after are left to
        exit on their own (see :meth:`~converter.workers.Workers.leave`), except after a
        ``failed`` run: those are stopped and reaped here, whether or not their last
        job happened to be answered before the error arrived."""
        for reading in self.readings:
            reading.close()
        if forking.PROCESS_ENDS and not failed and self.pool.idle():
            # (the helpers are idle: nothing more is written into the staging directory)
            fds = self._let_go()
            hold = [fd for fd in fds if fd >= 0] if worth_detaching(fds) else []
            if self.pool.leave(hold):
                if not hold:
                    for fd in fds:  # (small: freed here at once)
                        close_quietly(fd)
                return
            _quietly(self.pool.close)
            release_files(fds)
            return
        _quietly(self.pool.close)
        release_files(self._let_go())

    def _let_go(self) -> list[int]:
        """Remove the staging directory; the descriptors of the files still to free."""
        fds = []
        for inflated in self.inflated:
            fds.append(inflated.fd)
            inflated.fd = -1
        self.inflated = []
        staging, self.staging = self.staging, None
        if staging is not None:
            fds += staging.remove()
        return fds


def _quietly(close: Callable[[], None]) -> None:
    try:
        close()
    except OSError:
        pass

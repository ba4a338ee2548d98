"""Progress that suits its place.

On a terminal, a live ``tqdm`` bar. Anywhere else (a log file, CI, a pipe), a
bar's carriage-return updates pile up as hundreds of lines; there
:class:`Progress` writes one plain line every ``every`` of the work (10 % by
default) with the elapsed time and an estimate of the time left, and nothing
in between. ``enabled=False`` (``--quiet``) writes nothing.

Example
-------
>>> import io
>>> log = io.StringIO()
>>> bar = Progress(4, "train", stream=log, every=0.5)
>>> for _ in range(4):
...     bar.update(loss=1.0)
>>> bar.close()
>>> [line.split(" (")[0] for line in log.getvalue().splitlines()]
['train: 2/4', 'train: 4/4']
"""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


def on_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def format_seconds(seconds: float) -> str:
    """``0.4 s``, ``42 s``, ``3.5 min``, ``2.1 h``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """A live bar on a terminal, a line every ``every`` of ``total`` elsewhere."""

    def __init__(self, total: int, desc: str, enabled: bool = True, initial: int = 0,
                 stream=None, every: float = 0.1, unit: str = "it"):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.done, self.start_done = initial, initial
        self.stream = stream or sys.stderr
        self.every, self.unit = every, unit
        self.started = time.perf_counter()
        self.live = enabled and on_terminal(self.stream)
        self.bar = tqdm(total=total, desc=desc, initial=initial, file=self.stream,
                        disable=not self.live, unit=unit)
        self.next_mark = self._mark_after(initial)

    def _mark_after(self, done: int) -> int:
        step = max(1, round(self.every * self.total))
        return (done // step + 1) * step

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def estimate(self) -> float | None:
        """Seconds left, from the pace so far (None before the first update)."""
        moved = self.done - self.start_done
        return None if moved <= 0 else self.elapsed / moved * (self.total - self.done)

    def write(self, line: str):
        """A message that starts its own line (above a live bar)."""
        if not self.enabled:
            return
        if self.live:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def update(self, n: int = 1, **postfix):
        self.done += n
        if not self.enabled:
            return
        if self.live:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)
            return
        if self.done >= self.next_mark or self.done >= self.total:
            shown = ", ".join(f"{k}={v}" for k, v in postfix.items())
            left = self.estimate()
            pace = f"{format_seconds(self.elapsed)} elapsed" + (
                f", about {format_seconds(left)} left" if left and self.done < self.total else "")
            print(f"{self.desc}: {self.done}/{self.total} ({pace})" + (f" {shown}" if shown else ""),
                  file=self.stream, flush=True)
            self.next_mark = self._mark_after(self.done)

    def close(self):
        self.bar.close()


__all__ = ["Progress", "format_seconds", "on_terminal"]

"""Progress for the long waits: the first image build of `serve`, a template or runtime built on
first use by `create`, `template build`.

One line says what is being waited for, before the wait starts. Then, on a terminal, a spinner with
the elapsed time and the latest log line (cleared when the wait ends); anywhere else (a pipe, a log
file, a journal) no escape codes and no redraws: only the lines the caller asks to keep, as plain
lines. Log lines come from a build that ran a sandbox's commands: control characters are escaped
before they reach the terminal.
"""

from __future__ import annotations

import atexit
import sys
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

__all__ = ["BuildLog", "BuildOutput", "Waiting", "build_log", "printable"]

TAIL_LINES = 20  # of a build log, shown when the build fails


def printable(line: str) -> str:
    """A log line as it may be shown: one line, control characters (escape sequences) escaped."""
    text = line.rstrip("\r\n")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Waiting:
    """`with Waiting(console, "building X") as wait: ... wait.line(text)`.

    keep(line) picks the lines a non-terminal shows (by default none: only the opening line and
    the closing one); a terminal shows every line, one at a time, beside the spinner."""

    def __init__(
        self,
        console: Console,
        title: str,
        *,
        keep: Callable[[str], str | None] | None = None,
        done: str | None = None,
    ) -> None:
        self.console = console
        self.title = title
        self.keep = keep
        self.done = done
        self.started = 0.0
        self.last = ""
        self._progress: Progress | None = None
        self._task = TaskID(0)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __enter__(self) -> Waiting:
        self.started = time.monotonic()
        self._say(self.title)
        if self.console.is_terminal:
            self._progress = Progress(
                SpinnerColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}", markup=False),
                console=self.console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("", total=None)
        return self

    def line(self, text: str) -> None:
        """One line of the log (a chunk with several lines is split)."""
        for raw in text.splitlines() or [""]:
            shown = printable(raw).strip()
            if not shown:
                continue
            self.last = shown
            if self._progress is not None:
                width = max(self.console.width - 16, 20)  # spinner and elapsed time go first
                self._progress.update(self._task, description=shown[:width])
            elif self.keep is not None and (kept := self.keep(shown)) is not None:
                self._say(kept)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if exc_type is None and self.done is not None:
            self._say(f"{self.done} in {self.elapsed:.0f} s")

    def _say(self, text: str) -> None:
        # Plain and never wrapped: the line may be read by a script or land in a journal.
        self.console.print(Text(text), soft_wrap=True, highlight=False)


class BuildLog:
    """`on_build_log` for a create that may build a template on first use. Nothing is shown unless
    a build happens; then one line says so, a terminal shows the spinner with the build's latest
    line, and the display ends with the build log's own last line ("==> built …"), or with its last
    lines if the build failed."""

    def __init__(self, console: Console, what: str) -> None:
        self.console = console
        self.what = what
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._waiting: Waiting | None = None

    def __call__(self, text: str) -> None:
        if self._waiting is None and not self.tail:
            title = f"building {self.what} (first use); the create waits for it"
            self._waiting = Waiting(self.console, title).__enter__()
            atexit.register(self.close)  # an error ends the command while the spinner runs
        for line in text.splitlines():
            self.tail.append(printable(line))
            if self._waiting is not None:
                self._waiting.line(line)
            if line.startswith("==> built "):
                self.close()
                self.console.print(Text(printable(line)), soft_wrap=True, highlight=False)
            elif line.startswith("==> build failed"):  # the create fails next: its reason is in here
                self.close()
                self.console.print(Text("\n".join(self.tail)), soft_wrap=True, highlight=False)

    def close(self) -> None:
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.__exit__(None, None, None)


def build_log(console: Console, runtime: str | None, template: str | None) -> BuildLog | None:
    """The create's on_build_log: None when it names neither a runtime nor a template (nothing can
    be built, and the SDK then makes the one blocking request)."""
    if runtime:
        return BuildLog(console, f"runtime {runtime}")
    return BuildLog(console, f"template {template}") if template else None


class BuildOutput:
    """`template build`'s log: printed whole on stdout when that is not a terminal (a file, a CI
    log: as it was); on a terminal a spinner with the latest line, and the last lines shown if
    the build fails."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._waiting = Waiting(console, title) if console.is_terminal else None
        self._stdout_tty = sys.stdout.isatty()

    def __enter__(self) -> BuildOutput:
        if self._waiting is not None:
            self._waiting.__enter__()
        return self

    def __call__(self, line: str) -> None:
        self.tail.append(printable(line))
        if self._waiting is not None:
            self._waiting.line(line)
        else:
            # The spinner goes by stderr's console; stdout may still be a terminal (2>file): there
            # the sandbox's lines are escaped too, only a file or a pipe gets them as they were.
            sys.stdout.write((printable(line) if self._stdout_tty else line) + "\n")
            sys.stdout.flush()

    def __exit__(self, *exc: object) -> None:
        if self._waiting is not None:
            self._waiting.__exit__(None, None, None)

    def show_tail(self) -> None:
        """The log's last lines, on a terminal (elsewhere the whole log was printed already)."""
        if self._waiting is not None and self.tail:
            self.console.print(Text("\n".join(self.tail)), soft_wrap=True, highlight=False)

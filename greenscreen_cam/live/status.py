"""The terminal status line of ``greencam start``: live figures, a progress bar for offline jobs, the summary.

In a terminal it is one Rich live line (with a progress bar when the source knows its length); when
stderr is not a terminal it writes the same figures on one line every few seconds. Only the CLI uses it.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console


def format_duration(seconds: float) -> str:
    """``12.3 s``, ``2 min 05 s`` or ``1 h 02 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def _clock(seconds: float) -> str:
    whole = max(0, round(seconds))
    h, rest = divmod(whole, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class StatusLine:
    """One live status line on a terminal (Rich keeps event lines above it); a line every ``every`` s in logs.

    An offline job (see :meth:`begin_job`) shows its progress instead: on a terminal a bar
    with frames done of the total, elapsed time and time left; in a log the same figures
    at the start of each line.
    """

    def __init__(self, console: Console, settings: Any, *, interactive: bool | None = None, every: float = 5.0):
        self.console = console
        self.interactive = console.is_terminal if interactive is None else interactive
        self.every = every
        self.where = settings.server or f"{settings.model}@{settings.resolution or 'auto'} {settings.device}"
        self._last = float("-inf")
        self._live: Any = None
        self._job = False
        self._total: int | None = None
        self._task: Any = None

    def __enter__(self) -> StatusLine:
        if self.interactive:
            from rich.live import Live
            from rich.text import Text

            self._live = Live(Text(""), console=self.console, refresh_per_second=4, transient=True)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._task = None
        if self._live is not None:
            self._live.stop()
            self._live = None

    def begin_job(self, total: int | None) -> None:
        """The run is an offline job of ``total`` frames (None: unknown): show its progress from now on."""
        self._job, self._total = True, total
        if not self.interactive:
            return
        from rich.progress import BarColumn, Progress, TextColumn
        from rich.table import Column

        self.__exit__()
        self._live = Progress(
            BarColumn(bar_width=20),
            TextColumn("{task.fields[status]}", table_column=Column(no_wrap=True)),
            console=self.console,
            transient=True,
        )
        self._task = self._live.add_task("greencam", total=total, status="starting")
        self._live.start()

    def progress(self, s: dict[str, Any]) -> str:
        """``36 of 120 frames (30%), elapsed 0:12, left 0:28`` (what is known of it)."""
        done, secs = s["frames_out"], s["seconds"]
        if not self._total:
            return f"{done} frames, elapsed {_clock(secs)}"
        left = secs / done * max(0, self._total - done) if done else None
        text = f"{done} of {self._total} frames ({done / self._total:.0%}), elapsed {_clock(secs)}"
        return text + (f", left {_clock(left)}" if left is not None else "")

    def line(self, s: dict[str, Any]) -> str:
        edges = " (edges lag)" if s["sync"] == "capped" else ""  # held to --max-delay: lip sync before edges
        mic = f" mic +{s['audio_delay_ms']:.0f} ms" if s.get("audio_delay_ms") is not None else ""
        return (
            f"in {s['input_fps']:5.1f} fps | out {s['output_fps']:5.1f} fps | tracker {s['tracker_fps']:5.1f} fps | "
            f"latency p50 {s['latency_p50_ms']:.0f} ms p95 {s['latency_p95_ms']:.0f} ms | "
            f"sync {s['sync']} +{s['delay_p50_ms']:.0f}/{s['delay_p95_ms']:.0f} ms{edges}{mic} | {s['subject']} | "
            f"{self.where}"
        )

    def show(self, s: dict[str, Any]) -> None:
        if self._task is not None:
            short = f"{self.progress(s)} | tracker {s['tracker_fps']:.1f} fps | {s['subject']} | {self.where}"
            room = max(12, self.console.width - 22)  # the bar keeps its 20 columns; the text is cut at the end
            short = short if len(short) <= room else short[: room - 1] + "…"
            self._live.update(self._task, completed=s["frames_out"], status=short)
        elif self._live is not None:
            from rich.text import Text

            self._live.update(Text(self.line(s)))
        elif not self.interactive and s["seconds"] - self._last >= self.every:
            self._last = s["seconds"]
            head = f"{self.progress(s)} | " if self._job else ""
            self.console.print(f"greencam: {head}{self.line(s)}", soft_wrap=True, markup=False)

    def event(self, message: str) -> None:
        """A one-line message; thread-safe, and never garbles the status line."""
        self.console.print(f"greencam: {message}", soft_wrap=True, markup=False)

    def interrupted(self, s: dict[str, Any], total: int | None, unwritten: list[str]) -> None:
        """The one line of an offline job that was stopped before the end."""
        self.__exit__()
        done = f"{s['frames_out']} of {total}" if total else f"{s['frames_out']}"
        line = f"greencam: interrupted after {done} frames"
        if unwritten:
            line += f"; {_join_and(unwritten)} not written"
        self.console.print(line, soft_wrap=True, markup=False)

    @staticmethod
    def _idle_part(s: dict[str, Any]) -> str:
        """``, idle (no viewer) 2 times for 1 min 05 s`` when the run went idle, else nothing."""
        times = s.get("idle_periods", 0)
        if not times:
            return ""
        return f", idle (no viewer) {times} time{'s' if times != 1 else ''} for {format_duration(s['idle_seconds'])}"

    @staticmethod
    def _sinks_part(s: dict[str, Any]) -> str:
        """``, 3 frames not written to keyed.mp4 (too slow)`` when an output dropped frames, else nothing."""
        slow = [f"{c['dropped']} to {name}" for name, c in s.get("sinks", {}).items() if c.get("dropped")]
        return f", frames an output was too slow for: {', '.join(slow)}" if slow else ""

    def summary(self, s: dict[str, Any]) -> None:
        self.__exit__()
        self.console.print(
            f"greencam: done: {s['frames_out']} frames out of {s['frames_in']} in {format_duration(s['seconds'])} "
            f"(output {s['output_fps']:.1f} fps, tracker {s['tracker_fps']:.1f} fps, {s['dropped']} dropped, "
            f"latency p50 {s['latency_p50_ms']:.0f} ms / p95 {s['latency_p95_ms']:.0f} ms, "
            f"sync {s['sync']} added delay p50 {s['delay_p50_ms']:.0f} ms / p95 {s['delay_p95_ms']:.0f} ms, "
            f"{s['own_mask_share'] * 100:.1f}% keyed with their own mask{self._idle_part(s)}{self._sinks_part(s)})",
            soft_wrap=True,
            markup=False,
        )


def _join_and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]

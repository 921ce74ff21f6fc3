"""``python -m greenscreen_cam.bench suite|process|serve|capacity ...``: a thin alias of ``greencam bench``.

Each form becomes the ``greencam bench`` command with the matching flag, keeping the defaults the
form had (``make bench-gpu`` runs ``suite``):

- ``suite [--device D] [--out DIR] [--small] [--clip F] [--models A,B] [--budget S]`` = ``greencam bench --suite``
- ``process [SOURCE] [--frames N] [--repeats N] [--resolution R] [--device D]`` = ``greencam bench --process``
  (defaults 40 frames, 256 px, cpu)
- ``serve VIDEO [SESSIONS ...] [--seconds S] [--one-by-one]`` = ``greencam bench --serve`` (seeded random
  weights at 256 px on the CPU unless told otherwise)
- ``capacity [--model M] [--resolution R] [--device D] [--fps F] [--checkpoint F] [--one-by-one]`` =
  ``greencam bench --capacity`` (defaults tiny at 1024 px; random weights without ``--checkpoint``)
"""

from __future__ import annotations

import sys

from greenscreen_cam.cli import app

# Defaults each form had before ``greencam bench`` took it over; later flags override them.
_DEFAULTS = {
    "suite": ["--suite", "--device", "cuda"],
    "process": ["--process", "--frames", "40", "--resolution", "256", "--device", "cpu"],
    "serve": ["--serve", "--random-weights", "--resolution", "256", "--device", "cpu"],
    "capacity": ["--capacity", "--resolution", "1024"],
}


def bench_args(argv: list[str]) -> list[str]:
    """The ``greencam`` arguments for one ``python -m greenscreen_cam.bench`` command line.

    Example:
        >>> bench_args(["serve", "clip.mp4", "1", "4", "--seconds", "5"])[-7:]
        ['clip.mp4', '--seconds', '5', '--sessions', '1', '--sessions', '4']
    """
    if not argv or argv[0] not in _DEFAULTS:
        raise SystemExit(f"usage: python -m greenscreen_cam.bench {{{','.join(_DEFAULTS)}}} ...\n{__doc__}")
    form, rest = argv[0], list(argv[1:])
    args = ["bench", *_DEFAULTS[form]]
    if form == "capacity" and "--checkpoint" not in rest:
        args.append("--random-weights")
    if form == "serve":
        return [*args, *_sessions_as_options(rest)]
    return [*args, *rest]


def _sessions_as_options(rest: list[str]) -> list[str]:
    """``VIDEO 1 4 --seconds 5`` -> ``VIDEO --seconds 5 --sessions 1 --sessions 4``."""
    kept: list[str] = []
    counts: list[str] = []
    takes_value = False
    for i, arg in enumerate(rest):
        if i > 0 and arg.isdigit() and not takes_value:
            counts += ["--sessions", arg]
        else:
            kept.append(arg)
        takes_value = arg.startswith("--") and arg not in ("--one-by-one", "--random-weights", "--json")
    return kept + counts


def main(argv: list[str] | None = None) -> None:
    """Run ``greencam bench`` for the alias form in ``argv`` (default: ``sys.argv[1:]``)."""
    app(args=bench_args(sys.argv[1:] if argv is None else argv), prog_name="python -m greenscreen_cam.bench")


if __name__ == "__main__":
    main()

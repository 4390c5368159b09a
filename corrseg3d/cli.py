"""One error path for every command line of the project: ``error: <message>`` on stderr, exit 2.

Every entry point (``python -m pipeline.STAGE``, ``python -m pipeline STAGE``,
``python -m corrseg3d.train``) is a ``main(argv)`` decorated with :func:`entry_point` and parses
its arguments with :class:`ArgumentParser`. Bad input then always ends the same way: one line
``error: <what is wrong and how to fix it>`` on stderr, exit status 2, no traceback.

User-facing errors are :class:`ValueError` (every library error class of the project derives
from it: store, config, run state, checkpoint, ... errors) and :class:`OSError` (a file that
cannot be read or written). Ctrl-C (:class:`KeyboardInterrupt`) prints one ``interrupted:`` line
and exits 130. Anything else is a bug and keeps its traceback. Warnings raised
while the command runs (deprecated options, resampling notes) are printed the same way, one
``warning: <message>`` line each.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import warnings
from typing import Callable, NoReturn, Sequence

__all__ = ["USER_ERRORS", "EXIT_USAGE", "EXIT_INTERRUPTED", "INTERRUPTED", "ArgumentParser", "error_line",
           "entry_point"]

#: Exception types reported as one ``error:`` line instead of a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)
#: Exit status of a refused invocation (argparse's usage-error status).
EXIT_USAGE = 2
#: Exit status after Ctrl-C (128 + SIGINT, as a shell reports it), and the one line printed instead of a traceback.
EXIT_INTERRUPTED = 130
INTERRUPTED = ("interrupted: rerun the command without --overwrite or --restart to go on (blockwise stages keep "
               "their finished blocks; training resumes with --resume)")

Main = Callable[[Sequence[str] | None], int | None]


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one ``error:`` line (subparsers inherit it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def error_line(error: BaseException) -> str:
    """``error: <message>`` on one line (line breaks and runs of spaces in the message collapsed)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return f"error: {text}"


def _warning_line(message: Warning | str, *_: object) -> None:
    print(f"warning: {message}", file=sys.stderr)


def entry_point(main: Main) -> Callable[[Sequence[str] | None], int]:
    """Decorate a command line's ``main(argv)`` so user errors become one ``error:`` line and exit 2.

    Parameters
    ----------
    main
        Runs the command for ``argv`` (None = ``sys.argv[1:]``) and returns its exit status
        (None = 0).

    Returns
    -------
    ``main`` with the project's error path; it returns the exit status.
    """

    @functools.wraps(main)
    def run(argv: Sequence[str] | None = None) -> int:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _warning_line
                return int(main(argv) or 0)
        except USER_ERRORS as error:
            print(error_line(error), file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print(INTERRUPTED, file=sys.stderr)
            # zarr's store operations cut short leave coroutines and asyncio tasks that would each be
            # reported at exit ("coroutine ... was never awaited", "Task was destroyed but it is pending")
            warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)
            return EXIT_INTERRUPTED

    return run

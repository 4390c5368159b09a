"""``python -m pipeline COMMAND [ARGS]``: one entry point for every command (the Docker image's).

COMMAND is a stage of this package (data, predict, segment, evaluate, run, slurm, export, view),
``demo`` (the whole chain on a generated volume) or ``train`` (``python -m corrseg3d.train``).
``python -m pipeline COMMAND --help`` shows that command's options.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from corrseg3d.cli import entry_point

#: Command name -> module with a ``main(argv)`` function.
COMMANDS = {**{stage: f"pipeline.{stage}" for stage in ("data", "predict", "segment", "evaluate", "run", "slurm",
                                                         "export", "view", "demo")},
            "train": "corrseg3d.train"}


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command not in COMMANDS:
        raise ValueError(f"{f'unknown command {command!r}' if command else 'no command'}: run python -m pipeline "
                         f"COMMAND [ARGS] with one of {', '.join(COMMANDS)}")
    return int(importlib.import_module(COMMANDS[command]).main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""``python -m pipeline STAGE [ARGS]``: one entry point for every stage (the Docker image's).

STAGE is a module of this package with a ``main(argv)`` function: data, predict, segment,
evaluate, run, slurm, export, view. ``python -m pipeline STAGE --help`` shows that stage's options.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from corrseg3d.cli import entry_point

STAGES = ("data", "predict", "segment", "evaluate", "run", "slurm", "export", "view")


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    return int(importlib.import_module(f"pipeline.{stage}").main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

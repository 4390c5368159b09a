"""``python -m pipeline STAGE [ARGS]``: one entry point for every stage (the Docker image's).

STAGE is a module of this package with a ``main(argv)`` function: data, predict, segment,
evaluate, run, slurm, export. ``python -m pipeline STAGE --help`` shows that stage's options.
"""

from __future__ import annotations

import importlib
import sys

STAGES = ("data", "predict", "segment", "evaluate", "run", "slurm", "export")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"error: unknown stage {stage!r}; choose one of {', '.join(STAGES)}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"pipeline.{stage}")
    except ModuleNotFoundError:
        print(f"error: stage {stage!r} is not available in this version", file=sys.stderr)
        return 2
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

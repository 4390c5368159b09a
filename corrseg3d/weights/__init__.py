"""Weights shipped with the package (see MODEL_CARD.md beside this file)."""

from __future__ import annotations

from pathlib import Path

#: File name of the default checkpoint inside this folder.
DEFAULT_CHECKPOINT = "pea-em.pt"


def default_checkpoint() -> str:
    """Path of the shipped default checkpoint used when no ``--checkpoint`` is given."""
    return str(Path(__file__).with_name(DEFAULT_CHECKPOINT))

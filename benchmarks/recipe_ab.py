"""Equal-budget A/B of the training recipe levers, scored on held-out real and synthetic volumes.

Usage::

    python benchmarks/recipe_ab.py [--iterations 300] [--rows paper,no-ccm-cap1,shipped-recipe,direct-affinity]
                                   [--runs runs/recipe-ab] [--threads 1]

Every row trains a model **from scratch** (same seed, same data, same patch and batch, the same
number of iterations) with ``configs/em-mixed.yaml`` plus :data:`COMMON` (the data and constant
learning rate the A/B was measured with: one section series of the medulla volume) and the row's
overrides (:data:`ROWS`), then
scores its last checkpoint exactly as ``benchmarks/model_quality.py`` scores the shipped weights
(``pipeline.predict`` -> ``pipeline.segment`` with mutex watershed, :data:`SEGMENT` -> ``pipeline.evaluate`` on the
held-out FIB-SEM volumes at 30x10x10 nm, the held-out synthetic volume, ISBI slices 16-19; per-offset
ROC AUC of the affinities). Training validation is switched off so that every row spends its
budget on the same thing.

A killed run continues where it stopped: a row whose ``last.pt`` holds fewer iterations is resumed,
a row already scored in ``benchmarks/results/recipe_ab.json`` (same iterations) is skipped (only a
score it lacks, the isotropic volume, is added from its ``last.pt``).
Prints a table and writes ``benchmarks/results/recipe_ab.json``.

The synthetic-only rows measure how far a model trained on generated volumes alone carries to real
EM: ``synthetic-base-only`` on the ``base`` style volume of the shipped data, ``synthetic-wide-only``
on four ``wide`` style volumes (each its own look, ``pipeline.synth``) of about the same size::

    for s in 0 1 2 3; do python -m pipeline.data synth data/synthetic-wide-$s.zarr --shape 16,512,512 --seed $s --style wide; done

``both-geometries`` adds the training slices of the medulla volume at their isotropic 10x10x10 nm
(source slices 0-83, the tissue of the 30 nm training slices) to the A/B data, so the model trains
on both geometries::

    python -m pipeline.data fib25 data/fib25-10nm.zarr --source ../shared/data/fib25 --names medulla-ts2-z0-150
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from model_quality import FIB_ISOTROPIC_HELDOUT, heldout_fib, heldout_fib_isotropic, heldout_isbi, heldout_synthetic

from corrseg3d.checkpoint import read_checkpoint
from corrseg3d.train import load_config, train
from pipeline.predict import PredictOptions
from pipeline.segment import SegmentOptions

#: The A/B table was measured with mutex watershed, pipeline.segment's default until the multicut.
SEGMENT = SegmentOptions(method="mws")

RESULTS = Path(__file__).parent / "results" / "recipe_ab.json"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "em-mixed.yaml"
#: Training sources of the A/B (YAML): one section series of the medulla volume, synthetic, ISBI.
AB_SOURCES = (
    "{raw: data/fib25-30nm.zarr/medulla-ts2-z0-150/raw, labels: data/fib25-30nm.zarr/medulla-ts2-z0-150/labels, "
    "slices: [0, 28], weight: 0.5}",
    "{raw: data/synthetic.zarr/raw, labels: data/synthetic.zarr/labels, slices: [0, 48], weight: 0.3}",
    "{raw: data/isbi2012.zarr/raw, labels: data/isbi2012.zarr/labels, slices: [0, 16], weight: 0.2, labels_2d: true}",
)
ISOTROPIC_SOURCE = ("{raw: data/fib25-10nm.zarr/medulla-ts2-z0-150/raw, labels: data/fib25-10nm.zarr/medulla-ts2-z0-150/labels, "
                    "slices: [0, 84], weight: 0.25}")
WIDE_SOURCES = tuple(f"{{raw: data/synthetic-wide-{s}.zarr/raw, labels: data/synthetic-wide-{s}.zarr/labels}}" for s in range(4))


def sources(*entries: str) -> str:
    """The ``data.sources`` override listing ``entries``."""
    return "data.sources=[" + ", ".join(entries) + "]"


#: Overrides of ``configs/em-mixed.yaml`` shared by every row: the data and schedule of the A/B.
COMMON = ["optim.lr_schedule=constant", sources(*AB_SOURCES)]
#: The shipped recipe's loss levers.
SHIPPED_LEVERS = ["loss.ccm=false", "loss.class_weight_cap=1", "loss.mean_embedding=0.5"]
#: Row name -> overrides applied after :data:`COMMON`.
ROWS = {
    "paper": ["loss.ccm=true", "loss.class_weight_cap=null", "loss.mean_embedding=0"],
    "no-ccm-cap1": ["loss.ccm=false", "loss.class_weight_cap=1", "loss.mean_embedding=0"],
    "shipped-recipe": SHIPPED_LEVERS,
    "direct-affinity": ["model.head=affinity", "model.pyramid_heads=false", "loss.epm=false",
                        "loss.class_weight_cap=1", "loss.mean_embedding=0"],
    "both-geometries": SHIPPED_LEVERS + [sources(*AB_SOURCES, ISOTROPIC_SOURCE)],
    "synthetic-base-only": SHIPPED_LEVERS + [sources(AB_SOURCES[1].replace(", weight: 0.3", ""))],
    "synthetic-wide-only": SHIPPED_LEVERS + [sources(*WIDE_SOURCES)],
}
TABLE_VOLUMES = ("medulla-ts2-z0-150", "gala-train", "gala-example")


def train_row(name: str, iterations: int, runs: Path, threads: int) -> Path:
    """Train (or resume) one row to ``iterations``; returns its last checkpoint."""
    out = runs / name
    overrides = COMMON + ROWS[name] + [f"train.iterations={iterations}", f"train.threads={threads}", "train.num_workers=0",
                              "validation.volumes=[]", f"train.checkpoint_every={min(50, iterations)}"]
    config = load_config(CONFIG, overrides)
    done = read_checkpoint(out / "last.pt")["iteration"] if (out / "last.pt").exists() else 0
    if done < iterations:
        train(config, out, resume=done > 0, overwrite=done == 0 and out.exists(), progress=False)
    return out / "last.pt"


def training_seconds(run: Path) -> float:
    """Training time of a run over all its resumes: the sum over ``train.jsonl`` windows of iterations / (it/s)."""
    records = [json.loads(line) for line in (run / "train.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "train"]
    return sum((r["iteration"] - previous) / r["it_per_s"]
               for r, previous in zip(steps, [0] + [s["iteration"] for s in steps[:-1]]))


def score_row(checkpoint: Path, fib: str, isbi: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    predict_options = PredictOptions(checkpoint=str(checkpoint))
    return {"synthetic": heldout_synthetic(predict_options, (32, 256, 256), 1000, SEGMENT, work),
            "fib25": heldout_fib(predict_options, fib, SEGMENT, work),
            "fib25_10nm": heldout_fib_isotropic(predict_options, fib, SEGMENT, work),
            "isbi2012": heldout_isbi(str(checkpoint), isbi, (16, 19), work)}


def table(results: dict) -> str:
    """Markdown table: VOI (split/merge) / ARAND per volume, min-max AUC over offsets and the 27-px AUC."""
    head = ["row", "iterations", "train s"] + [f"{v} VOI / ARAND" for v in (*TABLE_VOLUMES, "synthetic")]
    head += ["ISBI ARAND", "medulla AUC min-max", "medulla 27-px AUC", "medulla at 10 nm VOI / ARAND"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in results.items():
        cells = [name, str(row["iterations"]), f"{row['train_seconds']:.0f}"]
        for volume in (*(row["scores"]["fib25"][v] for v in TABLE_VOLUMES), row["scores"]["synthetic"]):
            cells.append(f"{volume['voi']:.3f} ({volume['voi_split']:.2f} / {volume['voi_merge']:.2f}) / {volume['arand']:.3f}")
        cells.append(f"{row['scores']['isbi2012']['mean']['arand']:.3f}")
        auc = [o["auc"] for o in row["scores"]["fib25"]["medulla-ts2-z0-150"]["per_offset"]]
        cells += [f"{min(auc):.2f}-{max(auc):.2f}", f"{auc[-1]:.2f}"]
        isotropic = row["scores"].get("fib25_10nm", {}).get(FIB_ISOTROPIC_HELDOUT[0])
        cells.append(f"{isotropic['voi']:.3f} / {isotropic['arand']:.3f}" if isotropic else "not measured")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated names of ROWS")
    parser.add_argument("--runs", default="runs/recipe-ab", help="training output folders (one per row)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training and scoring")
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser.add_argument("--fib", default=str(shared / "fib25"))
    parser.add_argument("--isbi", default=str(shared / "isbi2012"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in args.rows.split(","):
        if name not in ROWS:
            parser.error(f"unknown row {name!r}; choose from {', '.join(ROWS)}")
        if results.get(name, {}).get("iterations") == args.iterations:
            scores, checkpoint = results[name]["scores"], Path(args.runs) / name / "last.pt"
            if "fib25_10nm" not in scores and checkpoint.exists():  # a row scored before the isotropic volume
                scores["fib25_10nm"] = heldout_fib_isotropic(PredictOptions(checkpoint=str(checkpoint)), args.fib,
                                                             SEGMENT, Path(tempfile.mkdtemp(prefix="bench-ab-")))
                RESULTS.write_text(json.dumps(results, indent=2))
            continue
        checkpoint = train_row(name, args.iterations, Path(args.runs), args.threads)
        results[name] = {"iterations": args.iterations, "overrides": ROWS[name],
                         "train_seconds": training_seconds(checkpoint.parent),
                         "host_threads": args.threads, "scores": score_row(checkpoint, args.fib, args.isbi)}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2))
        print(table({name: results[name]}), flush=True)
    print(table(results))


if __name__ == "__main__":
    main()

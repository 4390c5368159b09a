"""Job script templates that `pipeline.slurm` fills in and submits (package data: `phase.sbatch`)."""

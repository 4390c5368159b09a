"""Shared fixtures: a tiny checkpoint, a small synthetic input, its local reference run, a private SLURM cluster."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
import yaml
from test_predict import _tiny_checkpoint

from emcore.store import open_volume
from pipeline.run import run
from pipeline.runconfig import load_run_config
from pipeline.synth import write_synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Not the script's default port, so a test cluster never clashes with a developer's.
SLURMCTLD_PORT = "17917"


@pytest.fixture(scope="session")
def run_inputs(tmp_path_factory):
    """Folder with ``tiny.pt`` and ``in.zarr`` (16x64x96 raw + labels): 12 predict blocks of 8x32x32."""
    folder = tmp_path_factory.mktemp("inputs")
    _tiny_checkpoint(folder / "tiny.pt")
    write_synthetic(str(folder / "in.zarr"), (16, 64, 96), seed=2, chunks=(8, 64, 64))
    return folder


def file_mtimes(folder) -> dict[str, int]:
    """Modification time (ns) of every file below ``folder``, by path: equal before and after a command
    that writes nothing there."""
    return {os.path.join(here, name): os.stat(os.path.join(here, name)).st_mtime_ns
            for here, _, files in os.walk(folder) for name in files}


def write_run_config(folder, name: str, inputs, **sections) -> str:
    """Write ``folder/name.yaml`` for output store ``name.zarr`` with paths relative to ``folder``."""
    values = {
        "input": {"raw": os.path.relpath(inputs / "in.zarr" / "raw", folder)},
        "output": {"store": f"{name}.zarr"},
        "predict": {"checkpoint": os.path.relpath(inputs / "tiny.pt", folder), "block": [8, 32, 32],
                    "halo": [4, 32, 32], "precision": "fp32", "device": "cpu",
                    "threads": 1},
        "segment": {"min_size": 30, "block": [8, 32, 32]},
        "evaluate": {"gt": os.path.relpath(inputs / "in.zarr" / "labels", folder)},
        "slurm": {"mem": "1G", "cpus": 1, "time": "00:10:00", "max_array": 2},
    }
    for section, options in sections.items():
        values[section] = {**values.get(section, {}), **options}
    path = os.path.join(folder, f"{name}.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump(values, handle)
    return path


@pytest.fixture(scope="session")
def reference(run_inputs, tmp_path_factory):
    """The local (threads) run of the standard config: (config path, affinities, segmentation).

    torch runs with 1 thread, like the SLURM tasks (``slurm.cpus: 1`` -> OMP_NUM_THREADS=1) and
    dask workers: convolution sums differ in the last bit with the thread count (about 0.02 % of
    uint8 affinities move by 1 between 1 and 2 threads).
    """
    import torch

    folder = tmp_path_factory.mktemp("reference")
    path = write_run_config(folder, "local", run_inputs)
    config = load_run_config(path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(config, progress=False)
    finally:
        torch.set_num_threads(threads)
    return path, open_volume(config.location("affinities"))[:], open_volume(config.location("segmentation"))[:]


@pytest.fixture()
def keep_torch_threads():
    """Restore torch's process-wide thread count after a test whose commands pin it (``threads: 1``):
    later tests compare in-process results with subprocesses running torch's default count."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def assert_same_result(config, reference) -> None:
    _, affinities, segmentation = reference
    np.testing.assert_array_equal(open_volume(config.location("affinities"))[:], affinities)
    np.testing.assert_array_equal(open_volume(config.location("segmentation"))[:], segmentation)


@pytest.fixture(scope="session")
def slurm_installed() -> None:
    """Skips the test where SLURM's daemons and client (what slurm/local_cluster.sh runs) are missing."""
    missing = [name for name in ("slurmctld", "slurmd", "munged", "sbatch") if shutil.which(name) is None]
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge")


@pytest.fixture(scope="session")
def slurm_cluster(slurm_installed, tmp_path_factory):
    """A private single-node SLURM cluster (slurm/local_cluster.sh) for the session; sets SLURM_CONF."""
    folder = tmp_path_factory.mktemp("slurm")
    script = os.path.join(REPO, "slurm", "local_cluster.sh")
    env = {**os.environ, "CORRSEG3D_SLURMCTLD_PORT": SLURMCTLD_PORT}
    subprocess.run([script, "start", str(folder)], check=True, env=env, capture_output=True, text=True, timeout=120)
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
    try:
        yield folder
    finally:
        subprocess.run([script, "stop", str(folder)], env=env, capture_output=True, timeout=60)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous

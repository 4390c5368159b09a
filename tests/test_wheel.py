"""The package works installed from its wheel (not editable), run from another folder."""

import os
import subprocess
import sys

from conftest import write_run_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_install_runs_slurm_dry_run_and_predict_help(run_inputs, tmp_path):
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), REPO],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.iterdir()
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    # The wheel's files come first on the path (dependencies from this environment).
    env = {**os.environ, "PYTHONPATH": str(target)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=300)

    where = run("-c", "import pipeline.slurm as s, corrseg3d.weights as w; print(s.TEMPLATE); print(w.default_checkpoint())")
    template, weights = where.stdout.split()
    assert template.startswith(str(target)) and os.path.isfile(template)
    assert weights.startswith(str(target)) and os.path.isfile(weights)
    path = write_run_config(tmp_path, "run", run_inputs)
    submitted = run("-m", "pipeline.slurm", "submit", path, "--dry-run")
    assert submitted.returncode == 0, submitted.stderr
    assert "#SBATCH" in submitted.stdout and "--dependency=afterok" in submitted.stdout
    helped = run("-m", "pipeline.predict", "--help")
    assert helped.returncode == 0 and "--voxel-size" in helped.stdout

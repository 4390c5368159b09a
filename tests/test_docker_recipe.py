"""The Docker images' install step, run without Docker: the Dockerfile's own `make install` command
in a copy of the build context, into a fresh virtual environment (no system site packages).

Honest scope: this proves the recipe (Makefile + setup.cfg + dependency pins) installs from a clean
environment and that the entry point works; it does not build the image (no Docker daemon in CI)
and does not exercise the CUDA base image, whose install differs only by reusing its torch.
It takes about 3 min on 2 cores (marked slow; CI runs it, beside the other test files: `make test`).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess

import pytest

from pipeline.__main__ import COMMANDS, main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILES = ("docker/Dockerfile", "docker/Dockerfile.cuda")


def _instructions(name: str) -> list[tuple[str, str]]:
    text = open(os.path.join(REPO, name)).read().replace("\\\n", " ")
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _install_command(name: str) -> str:
    args = {k: v.strip('"') for kind, rest in _instructions(name) if kind == "ARG"
            for k, _, v in [rest.partition("=")]}
    runs = [rest for kind, rest in _instructions(name) if kind == "RUN" and "make install" in rest]
    assert len(runs) == 1, f"{name} must install with exactly one `make install` step"
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], runs[0])


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_installs_with_make_and_runs_the_pipeline_cli(name):
    instructions = dict(_instructions(name))
    assert instructions["ENTRYPOINT"] == '["python", "-m", "pipeline"]'
    assert "/opt/venv/bin" in instructions["ENV"]
    assert _install_command(name).startswith("make install VENV=/opt/venv")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_entry_point_runs_every_command(command, capsys):
    """``python -m pipeline COMMAND --help`` reaches that command's own parser (train and demo included)."""
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m ")


@pytest.mark.slow
def test_cpu_dockerfile_install_step_in_a_clean_venv(tmp_path):
    context = tmp_path / "context"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for relative in files:  # COPY . . of the build context (ignored files such as .venv excluded)
        if os.path.isfile(os.path.join(REPO, relative)):
            os.makedirs(context / os.path.dirname(relative), exist_ok=True)
            shutil.copy2(os.path.join(REPO, relative), context / relative)
    venv = tmp_path / "venv"
    command = shlex.split(_install_command("docker/Dockerfile").replace("/opt/venv", str(venv)))
    subprocess.run(command, cwd=context, check=True, capture_output=True, timeout=900)
    python = str(venv / "bin" / "python")
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    entry = subprocess.run([python, "-m", "pipeline", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert entry.returncode == 0 and "COMMAND" in entry.stdout
    where = subprocess.run([python, "-c", "import pipeline.run, pipeline.slurm, dask_jobqueue, torch, sys;"
                            "print(pipeline.__file__); print(sys.prefix != sys.base_prefix)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout.split()
    assert where == [str(context / "pipeline" / "__init__.py"), "True"]
    bad = subprocess.run([python, "-m", "pipeline.run", str(tmp_path / "missing.yaml")], capture_output=True,
                         text=True, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: config")

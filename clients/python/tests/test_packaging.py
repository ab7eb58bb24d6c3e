"""`python -m build` makes an sdist and a wheel that each install into a fresh venv (pulling
only `websockets`) and import, typed (py.typed)."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]

CHECK = """
import importlib.resources, firetower
assert importlib.resources.files("firetower").joinpath("py.typed").is_file(), "py.typed missing"
assert firetower.Client and firetower.Backoff and issubclass(firetower.Forbidden, firetower.FiretowerError)
print(firetower.__version__)
import pathlib
path = pathlib.Path(firetower.__file__).resolve()
print(next(p for p in path.parents if p.name == "lib"))
"""


def clean_env() -> dict[str, str]:
    """The environment without what would let this checkout leak into the venv (PYTHONPATH
    naming src/, where an egg-info makes pip think the package is installed already)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run = subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out),
                          str(PROJECT)], capture_output=True, text=True)
    assert run.returncode == 0, f"python -m build failed:\n{run.stdout}{run.stderr}"
    return out


@pytest.mark.parametrize("kind", ["*.whl", "*.tar.gz"])
def test_artifact_installs_into_a_fresh_venv_and_imports(dist, tmp_path, kind):
    (artifact,) = dist.glob(kind)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", str(artifact)],
                             capture_output=True, text=True, env=clean_env(), cwd=tmp_path)
    assert install.returncode == 0, f"pip install {artifact.name} failed:\n{install.stdout}{install.stderr}"
    # Run from an empty directory: the import must come from the venv, not this checkout.
    check = subprocess.run([str(python), "-c", CHECK], capture_output=True, text=True,
                           env=clean_env(), cwd=tmp_path)
    assert check.returncode == 0, f"import failed:\n{check.stdout}{check.stderr}"
    assert check.stdout.strip().splitlines() == ["0.1.0", str(env_dir / "lib")], check.stdout
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"],
                            capture_output=True, text=True, env=clean_env(), cwd=tmp_path).stdout
    names = {line.split("==")[0].lower() for line in listed.split()}
    assert names - {"pip", "setuptools", "wheel"} == {"firetower-client", "websockets"}, names

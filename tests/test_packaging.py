"""The sdist and the wheel carry every package-data file pyproject declares, and the LICENSE.

The patterns are read from pyproject's `[tool.setuptools.package-data]`, so a new entry is
checked as soon as it is declared. Built offline: `--no-isolation` uses this environment's
setuptools instead of downloading one.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def declared_package_data() -> list[str]:
    """Every file the package-data patterns match in the source tree, relative to ROOT."""
    files = []
    for package, patterns in PYPROJECT["tool"]["setuptools"]["package-data"].items():
        folder = ROOT / package.replace(".", "/")
        for pattern in patterns:
            matched = sorted(p for p in folder.glob(pattern) if p.is_file())
            assert matched, f"package-data {package!r}: {pattern!r} matches no file"
            files += [p.relative_to(ROOT).as_posix() for p in matched]
    return files


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, set[str]]:
    """The names inside the sdist (without its top folder) and the wheel."""
    out = tmp_path_factory.mktemp("dist")
    # Without --sdist/--wheel, build makes the sdist and then the wheel from it: a file the
    # sdist leaves out is missing from the wheel too.
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    [sdist] = out.glob("*.tar.gz")
    [wheel] = out.glob("*.whl")
    with tarfile.open(sdist) as tar:
        sdist_names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    with zipfile.ZipFile(wheel) as zipped:
        wheel_names = set(zipped.namelist())
    return {"sdist": sdist_names, "wheel": wheel_names}


def test_pyproject_declares_the_package_data_the_code_reads():
    assert {"gradcam_cli/demo/shapes.safetensors", "gradcam_cli/colormaps.npz"} <= set(
        declared_package_data()
    )


@pytest.mark.parametrize("kind", ["sdist", "wheel"])
def test_every_package_data_file_is_in_the_archive(archives, kind):
    missing = [name for name in declared_package_data() if name not in archives[kind]]
    assert not missing, f"{kind} lacks {missing}"


def test_the_license_file_is_the_mit_license_pyproject_names():
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    assert PYPROJECT["project"]["license"] == "MIT"


@pytest.mark.parametrize("kind", ["sdist", "wheel"])
def test_the_archive_carries_the_license(archives, kind):
    licenses = [name for name in archives[kind] if name.rsplit("/", 1)[-1] == "LICENSE"]
    assert licenses, f"no LICENSE in the {kind}"
    if kind == "sdist":
        assert "LICENSE" in licenses
    else:
        assert all(".dist-info/" in name for name in licenses), licenses

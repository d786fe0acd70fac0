"""Packaging (issue 11, point 7): no symlinks in the package, the recipes reach the wheel from
the top-level recipes/, the LICENSE the metadata names exists."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_package_has_no_symlinks_and_finds_its_recipes():
    from diffq_cli.config import load as recipe
    links = [p for p in (ROOT / "diffq_cli").rglob("*") if p.is_symlink()]
    assert links == []
    assert recipe.RECIPES_DIR.resolve() == (ROOT / "recipes").resolve()
    assert {p.name for p in recipe.RECIPES_DIR.glob("*.yaml")} == {
        p.name for p in (ROOT / "recipes").glob("*.yaml")}


def test_license_file_matches_the_metadata():
    project = pyproject()["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_every_python_package_is_listed():
    """The packages are listed by hand (for the recipes mapping): a new one must be added."""
    from setuptools import find_packages

    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    assert set(find_packages(str(ROOT), include=["diffq_cli*"])) <= listed


@pytest.mark.slow
def test_wheel_carries_recipes_and_license(tmp_path):
    """A non-editable build from a copy of the tree (symlinks would not survive it)."""
    src = tmp_path / "src"
    keep = ("diffq_cli", "recipes", "pyproject.toml", "README.md", "LICENSE")
    for name in keep:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(src)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for recipe in (ROOT / "recipes").glob("*.yaml"):
        assert f"diffq_cli/recipes/{recipe.name}" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "diffq_cli/data/assets/digits.npz" in names

"""utils.install, for real: pip installs into a throwaway virtualenv from small wheels this test
builds itself (``--no-index --find-links``), never touching torch or this environment.

The virtualenv stands in for Colab: it has "preinstalled" packages at old versions, and the
project's extras ask for packages that a plain ``pip install`` would satisfy by upgrading them.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from utils.errors import UserError
from utils.install import (
    constraints_for,
    extra_requirements,
    install_extras,
    installed_versions,
    normalise,
)

pytestmark = pytest.mark.slow


def build_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A minimal pure-Python wheel ``name-version`` with one module and ``Requires-Dist``s."""
    module = name.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    files = {
        f"{module}.py": f"VERSION = {version!r}\n",
        f"{dist_info}/METADATA": "Metadata-Version: 2.1\n"
        f"Name: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """The "package index": numpy-like ``corelib`` 1.0 and 2.0, ``tracker`` needing any corelib,
    ``greedy`` needing corelib 2 (a conflict with the preinstalled 1.0), ``helper``."""
    folder = tmp_path_factory.mktemp("wheels")
    build_wheel(folder, "corelib", "1.0")
    build_wheel(folder, "corelib", "2.0")
    build_wheel(folder, "widgetlib", "7.7.1")
    build_wheel(folder, "widgetlib", "8.1.0")
    build_wheel(folder, "helper", "0.3")
    build_wheel(folder, "tracker", "1.2", ("corelib>=1.0", "helper", "widgetlib>=7"))
    build_wheel(folder, "greedy", "3.0", ("corelib>=2.0",))
    return folder


@pytest.fixture(scope="module")
def colab_like(wheels, tmp_path_factory) -> str:
    """A virtualenv with corelib 1.0 and widgetlib 7.7.1 "preinstalled"; returns its python."""
    root = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(root)
    python = str(root / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--find-links",
                    str(wheels), "corelib==1.0", "widgetlib==7.7.1"], check=True)
    return python


def pyproject(tmp_path: Path, extras: dict[str, list[str]]) -> Path:
    lines = ["[project]", 'name = "transformer-testbench"', 'version = "0.1.0"', "",
             "[project.optional-dependencies]"]
    lines += [f"{name} = {reqs!r}".replace("'", '"') for name, reqs in extras.items()]
    path = tmp_path / "pyproject.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_installs_the_extras_and_changes_nothing_preinstalled(colab_like, wheels, tmp_path):
    before = installed_versions(colab_like)
    project = pyproject(tmp_path, {"train": ["tracker", "widgetlib>=7"],
                                   "all": ["transformer-testbench[train]"]})
    said: list[str] = []
    result = install_extras(["all"], pyproject=project, python=colab_like,
                            pip_args=["--no-index", "--find-links", str(wheels)],
                            say=said.append)
    after = installed_versions(colab_like)
    assert {n: after[n] for n in before} == before  # every preinstalled version kept
    assert after["corelib"] == "1.0" and after["widgetlib"] == "7.7.1"
    assert result.added == {"tracker": "1.2", "helper": "0.3"}
    assert result.requirements == ["tracker", "widgetlib>=7"]  # the self-reference expanded
    assert "Installed 2 packages" in str(result) and "kept their versions" in str(result)
    assert any(line.startswith("Installing 2 packages: ") for line in said)
    # Again: nothing to do, nothing changes.
    again = install_extras(["train"], pyproject=project, python=colab_like,
                           pip_args=["--no-index", "--find-links", str(wheels)], say=said.append)
    assert again.added == {} and "already installed" in str(again)


def test_a_conflict_names_it_and_installs_nothing(colab_like, wheels, tmp_path):
    before = installed_versions(colab_like)
    project = pyproject(tmp_path, {"train": ["helper", "greedy"]})
    with pytest.raises(UserError, match=r"cannot be installed without changing.*corelib") as err:
        install_extras(["train"], pyproject=project, python=colab_like,
                       pip_args=["--no-index", "--find-links", str(wheels)], say=lambda _: None)
    assert "Nothing was installed" in err.value.why and "pip install -U" in err.value.fix
    assert installed_versions(colab_like) == before  # not even helper, which had no conflict


def test_requirements_come_from_the_project_or_say_what_is_missing(tmp_path):
    root = Path(__file__).resolve().parent.parent
    reqs, source = extra_requirements(["train"])
    assert source == str(root / "pyproject.toml") and any(r.startswith("lightning") for r in reqs)
    with pytest.raises(UserError, match="no extra called 'trian'") as err:
        extra_requirements(["trian"], root / "pyproject.toml")
    assert "train" in err.value.why
    broken = tmp_path / "pyproject.toml"
    broken.write_text("[project\n")
    with pytest.raises(UserError, match="cannot be read"):
        extra_requirements(["train"], broken)


def test_constraints_pin_every_version_pip_can_parse():
    text, skipped = constraints_for({"torch": "2.6.0+cu124", "numpy": "2.0.2",
                                     "odd": "2019-03-banana", "transformer-testbench": "0.1.0"})
    assert text == "numpy==2.0.2\ntorch==2.6.0+cu124\n" and skipped == ["odd"]
    assert normalise("Jupyter_Client.Extra") == "jupyter-client-extra"
    assert installed_versions(sys.executable)["torch"].startswith("2.")

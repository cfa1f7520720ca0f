"""The wheels: a runtime install (`pip install .`, no extras) pulls in none of the build side's libraries,
the repository's wheel carries all three packages (and the bundled checkpoints), and a tree holding only
service/ (what the container image copies) builds a wheel of `segserve` alone.

Wheels are built offline with the venv's setuptools (`pip wheel --no-deps --no-build-isolation`), from
copies in a temporary folder so that no build/ or *.egg-info lands in the repository."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("pyproject.toml", "setup.py", "README.md")
BUILD_ONLY = {"locust", "matplotlib", "hdrhistogram", "onnxscript", "onnx", "tqdm", "httpx", "tritonclient",
              "pytest", "import-linter"}


def build_wheel(tmp: Path, folders: tuple[str, ...]) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, src / name)
    for folder in folders:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", ".", "-w", str(out)],
        cwd=src, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}\n{result.stderr}"
    (wheel,) = out.glob("segserve-*.whl")
    return wheel


@pytest.fixture(scope="module")
def full_wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("full"), ("service", "models", "loadtest"))


@pytest.fixture(scope="module")
def runtime_wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("runtime"), ("service",))


def wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(z.read(name))


def top_level(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return {n.split("/")[0] for n in z.namelist() if not n.split("/")[0].endswith(".dist-info")}


def runtime_requirements(wheel: Path) -> list[Requirement]:
    """Requires-Dist that apply to `pip install segserve` (no extras)."""
    reqs = [Requirement(r) for r in wheel_metadata(wheel).get_all("Requires-Dist")]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


def closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution a runtime install resolves to, walked through the metadata of this venv's
    installed (locked) distributions, extras and environment markers included."""
    seen: set[str] = set()
    todo = [(r, frozenset(r.extras)) for r in requirements]
    done_extras: set[tuple[str, frozenset]] = set()
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        if (name, extras) in done_extras:
            continue
        done_extras.add((name, extras))
        seen.add(name)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{req.name} (a runtime dependency) is not installed in the dev venv: is requirements.lock complete?")
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in (extras or {""})):
                todo.append((sub, frozenset(sub.extras)))
    return seen


def test_runtime_requirements_hold_no_build_side_library(runtime_wheel, full_wheel):
    for wheel in (runtime_wheel, full_wheel):  # the same pyproject: no extras means runtime only
        names = {canonicalize_name(r.name) for r in runtime_requirements(wheel)}
        assert names & BUILD_ONLY == set(), f"{wheel.name}: build-only libraries in the runtime requirements"
        assert {"torch", "onnxruntime", "fastapi", "uvicorn", "grpcio"} <= names


def test_runtime_dependency_closure_holds_no_build_side_library(runtime_wheel):
    resolved = closure(runtime_requirements(runtime_wheel))
    assert "segserve" not in resolved
    assert resolved & BUILD_ONLY == set(), f"pulled in transitively: {sorted(resolved & BUILD_ONLY)}"


def test_extras_carry_the_build_side_libraries(full_wheel):
    meta = wheel_metadata(full_wheel)
    assert set(meta.get_all("Provides-Extra")) == {"client", "export", "train", "loadtest", "test"}
    reqs = [Requirement(r) for r in meta.get_all("Requires-Dist")]

    def of(extra: str) -> set[str]:
        return {canonicalize_name(r.name) for r in reqs if r.marker is not None and r.marker.evaluate({"extra": extra})}

    assert {"onnx", "onnxscript", "tqdm"} <= of("export")
    assert {"locust", "matplotlib", "hdrhistogram"} <= of("loadtest")


def test_repository_wheel_holds_runtime_and_build_side(full_wheel):
    assert top_level(full_wheel) == {"segserve", "segserve_models", "segserve_loadtest"}
    with zipfile.ZipFile(full_wheel) as z:
        names = set(z.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = z.read(entry_points).decode()
    bundled = {f"segserve_models/checkpoints/{n}" for n in
               ("SHA256SUMS", "shapes_lraspp.pth", "shapes_lraspp_video.pth", "shapes_maskrcnn.pth",
                "shapes_keypointrcnn.pth")}
    assert bundled <= names, "the bundled checkpoints (--weights bundled:NAME) must be in the wheel"
    assert {"segserve/cli.py", "segserve/server.py", "segserve_models/cli.py", "segserve_loadtest/run.py"} <= names
    assert "segserve = segserve.cli:main" in entry_points
    assert "export = segserve_models.cli:add_export" in entry_points
    assert "segment = segserve.client.cli:add_segment" in entry_points


def test_runtime_only_tree_builds_a_segserve_only_wheel(runtime_wheel):
    assert top_level(runtime_wheel) == {"segserve"}
    with zipfile.ZipFile(runtime_wheel) as z:
        names = z.namelist()
    assert "segserve/transport/grpc/inference_pb2.py" in names
    assert {f"segserve/transport/http/static/{n}" for n in ("index.html", "demo.js", "demo.css")} <= set(names)  # the demo page
    assert not [n for n in names if n.endswith(".pth")]


def test_requirements_lock_pins_the_whole_dev_environment(full_wheel):
    """`make setup` installs requirements.lock, then the project with --no-deps: the lock must pin every
    distribution that segserve with all its extras resolves to, at the version installed here."""
    reqs = [Requirement(r) for r in wheel_metadata(full_wheel).get_all("Requires-Dist")]
    extras = ("", *wheel_metadata(full_wheel).get_all("Provides-Extra"))
    wanted = [r for r in reqs if canonicalize_name(r.name) != "segserve"
              and (r.marker is None or any(r.marker.evaluate({"extra": e}) for e in extras))]
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            lock[canonicalize_name(name)] = version
    needed = closure(wanted)
    assert needed - lock.keys() == set(), f"missing from requirements.lock (make lock): {sorted(needed - lock.keys())}"
    stale = {n: (lock[n], metadata.version(n)) for n in needed if lock[n] != metadata.version(n)}
    assert not stale, f"lock vs installed (make setup): {stale}"


def test_every_module_of_the_tree_is_in_the_wheels(runtime_wheel, full_wheel):
    """Folders without an __init__.py (namespace packages, e.g. service/pipelines/video) too: an
    editable install imports them from the tree, so only the wheel (the image) shows what is missing."""
    folders = {"segserve": "service", "segserve_models": "models", "segserve_loadtest": "loadtest"}
    for wheel, packages in ((runtime_wheel, ["segserve"]), (full_wheel, list(folders))):
        with zipfile.ZipFile(wheel) as z:
            names = set(z.namelist())
        for package in packages:
            expected = {f"{package}/{p.relative_to(ROOT / folders[package]).as_posix()}"
                        for p in (ROOT / folders[package]).rglob("*.py") if "__pycache__" not in p.parts}
            assert expected - names == set(), f"{wheel.name}: modules missing from the wheel"

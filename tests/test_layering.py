"""The one-way layering (.importlinter) is part of `make test`: build side -> runtime -> graphs -> contract.

`lint-imports` is the venv's (next to sys.executable), run from the repository root. A contract that the
code really breaks must fail it, so a passing run means the checker looked, not that it found nothing."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(*args: str) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.is_file():
        pytest.fail(f"{LINT_IMPORTS} missing: import-linter is in the `test` extra and requirements.lock (make setup)")
    return subprocess.run([str(LINT_IMPORTS), "--no-logo", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_imports_follow_the_layering_contracts():
    result = lint_imports()
    assert result.returncode == 0, f"lint-imports failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
    assert "0 broken" in result.stdout, result.stdout


def test_lint_imports_fails_on_an_import_against_a_contract(tmp_path):
    # segserve.pipelines really imports segserve.scheduler (the batcher): forbidding it must break
    config = tmp_path / "broken.ini"
    config.write_text(
        "[importlinter]\n"
        "root_packages =\n    segserve\n"
        "[importlinter:contract:probe]\n"
        "name = probe: pipelines may not import the scheduler\n"
        "type = forbidden\n"
        "source_modules =\n    segserve.pipelines\n"
        "forbidden_modules =\n    segserve.scheduler\n"
    )
    result = lint_imports("--no-cache", str(config))
    assert result.returncode != 0, f"a contract the code breaks passed:\n{result.stdout}\n{result.stderr}"
    assert "BROKEN" in result.stdout and "segserve.pipelines" in result.stdout, result.stdout


def test_the_runtime_contract_covers_every_runtime_module():
    """A new folder or module in service/ must be added to the `runtime` contract's sources (and to
    the `client-beside-the-server` one's), else it could import the build side, or the client, unchecked."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / ".importlinter")
    # the client has its own contracts: it may use tqdm, and no server module imports it
    sources = set(parser["importlinter:contract:runtime"]["source_modules"].split()) | {"segserve.client"}
    assert sources - {"segserve.client"} == set(parser["importlinter:contract:client-beside-the-server"]["source_modules"].split())
    service = ROOT / "service"
    modules = {
        f"segserve.{p.stem}" for p in service.iterdir()
        if (p.suffix == ".py" or (p / "__init__.py").is_file()) and p.stem != "__init__"
    }
    assert modules - sources == set(), f"add to [importlinter:contract:runtime] source_modules: {sorted(modules - sources)}"

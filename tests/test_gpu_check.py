"""`make gpu-check`'s dry run (segserve_loadtest.gpu_check --dry-run): every phase on CPU with tiny
request counts -- the bundled LRASPP served twice, on the device and the CPU data path, their
answers agreeing, ab's figures parsed -- and no docs written. The GPU figures need a GPU."""

from __future__ import annotations

import shutil

import pytest

from segserve_loadtest import gpu_check
from tests.conftest import BUNDLED_MODEL


@pytest.mark.skipif(shutil.which("ab") is None, reason="ab (apache2-utils) is not installed")
def test_the_dry_run_checks_the_plumbing_and_writes_nothing(bundled_repo, tmp_path, capsys):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n")
    assert gpu_check.main(["--dry-run", "--repository", str(bundled_repo), "--docs", str(docs)]) == 0
    out = capsys.readouterr().out
    assert docs.read_text() == "# Benchmarks\n"
    assert f"{BUNDLED_MODEL} 128x128" in out
    assert "| device | torch on cpu, data path device:cpu |" in out
    assert "| cpu | torch on cpu, data path cpu |" in out
    assert "1.0000 of pixels" in out  # the undrafted scene: the same label map from both paths


def test_the_gpu_run_replaces_only_its_section(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nabove\n")
    gpu_check.replace_section(docs, "first")
    gpu_check.replace_section(docs, "second\nblock")
    text = docs.read_text()
    assert text == f"# Benchmarks\n\nabove\n\n{gpu_check.BEGIN}\nsecond\nblock\n{gpu_check.END}\n"

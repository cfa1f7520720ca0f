"""Where model weights come from: torchvision's pretrained URLs, a local file, or random.

`pretrained` downloads into a cache directory with a progress bar and checks the file's
sha256 against the hash prefix torchvision publishes in every weight file name
(``name-<sha256 prefix>.pth``, the torch.hub convention). Offline, it fails with a message
that says what to do instead. `random` is never chosen silently: the caller asks for it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,64})\.")
# Small models trained here on synthetic data (models/train.py), committed with their sha256s.
BUNDLED_DIR = Path(__file__).resolve().parent / "checkpoints"
BUNDLED_MANIFEST = BUNDLED_DIR / "bundled.yaml"  # the bundled models and how they are exported (`segserve export --bundled`)


class WeightsError(RuntimeError):
    pass


@dataclass(frozen=True)
class WeightsSpec:
    source: str  # "pretrained" | "file" | "bundled" | "random"
    path: Path | None = None
    seed: int = 0

    @classmethod
    def parse(cls, text: str) -> "WeightsSpec":
        """'pretrained', 'random', 'random:SEED', 'bundled:NAME' or a path ('file:PATH' or just PATH)."""
        if text == "pretrained":
            return cls("pretrained")
        if text == "random" or text.startswith("random:"):
            return cls("random", seed=int(text.partition(":")[2] or 0))
        if text.startswith("bundled:"):
            return cls("bundled", path=BUNDLED_DIR / f"{text.partition(':')[2]}.pth")
        path = Path(text.removeprefix("file:")).expanduser()
        return cls("file", path=path)

    def describe(self) -> str:
        if self.source == "random":
            return f"random (seed {self.seed})"
        if self.source == "bundled":
            return f"bundled {self.path.name} (sha256 {sha256_of(self.path)[:12]}, trained on synthetic shapes)"
        return "pretrained" if self.source == "pretrained" else f"file {self.path}"


def cache_dir() -> Path:
    root = os.environ.get("SEGSERVE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "segserve"
    )
    return Path(root) / "weights"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_sha256(path: Path, expected_prefix: str) -> None:
    actual = sha256_of(path)
    if not actual.startswith(expected_prefix):
        raise WeightsError(f"{path}: sha256 {actual[:16]}... does not match expected {expected_prefix}")


def download(url: str, dest_dir: Path | None = None, progress: bool = True, timeout: float = 30.0) -> Path:
    """Fetch ``url`` into the cache (once), verified by the hash in its file name."""
    dest_dir = dest_dir or cache_dir()
    dest_dir.mkdir(parents=True, exist_ok=True)
    filename = url.rsplit("/", 1)[-1]
    dest = dest_dir / filename
    match = HASH_IN_NAME.search(filename)
    expected = match.group(1) if match else None
    if dest.is_file():
        if expected:
            verify_sha256(dest, expected)
        return dest
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tempfile.NamedTemporaryFile(dir=dest_dir, delete=False) as tmp:
                with tqdm(total=total, unit="B", unit_scale=True, desc=filename, disable=not progress) as bar:
                    for chunk in iter(lambda: response.read(1 << 16), b""):
                        tmp.write(chunk)
                        bar.update(len(chunk))
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise WeightsError(
            f"cannot download pretrained weights from {url} ({exc}). This machine seems to be offline. "
            f"Put the file at {dest} (sha256 prefix {expected or 'n/a'}), pass a local checkpoint with "
            f"--weights PATH, or use the bundled models / --weights random."
        ) from exc
    tmp_path = Path(tmp.name)
    if expected:
        try:
            verify_sha256(tmp_path, expected)
        except WeightsError:
            tmp_path.unlink(missing_ok=True)
            raise
    shutil.move(tmp_path, dest)
    return dest


def verify_bundled(path: Path) -> None:
    """A bundled checkpoint must match its line in checkpoints/SHA256SUMS."""
    sums = dict(reversed(line.split()) for line in (BUNDLED_DIR / "SHA256SUMS").read_text().splitlines() if line.strip())
    if path.name not in sums:
        known = sorted(n.removesuffix(".pth") for n in sums)
        raise WeightsError(f"no bundled checkpoint {path.stem!r}; bundled: {known}")
    verify_sha256(path, sums[path.name])


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from a .pth/.pt file; accepts {'model': state} and {'state_dict': state} wrappers."""
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} does not hold a state_dict")
    return obj

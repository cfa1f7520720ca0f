"""The model repository on disk: every model folder with its config and served version.

Layout, in the spirit of Triton's::

    model_repository/
      lraspp_mobilenet_v3_large/
        config.yaml          # segserve.contract.model_config.ModelConfig
        1/                   # versions: integer folder names, the highest is served
          model.onnx         # ONNX Runtime artifact (uint8 NCHW in, in-graph normalisation)
          weights.pt         # state_dict for the PyTorch backend (rebuilt from `architecture`)
          export.json        # what produced it: weights source, parity figures, versions
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel

from segserve.contract.artifacts import CONFIG_FILE
from segserve.contract.model_config import ModelConfig, latest_version, load_config

log = logging.getLogger(__name__)


class ModelEntry(BaseModel):
    """A model found in the repository: its config and the folder of the served version."""

    config: ModelConfig
    root: Path
    version: int | None  # None when no version folder exists
    error: str | None = None

    @property
    def version_dir(self) -> Path | None:
        return None if self.version is None else self.root / str(self.version)



def scan(repository: Path) -> list[ModelEntry]:
    """Every model folder with a config.yaml, sorted by name. Broken configs are reported,
    not fatal: one bad model must not keep the others from serving."""
    entries: list[ModelEntry] = []
    if not repository.is_dir():
        return entries
    for model_dir in sorted(p for p in repository.iterdir() if (p / CONFIG_FILE).is_file()):
        try:
            config = load_config(model_dir)
        except Exception as exc:  # noqa: BLE001 - any parse/validation error is reported per model
            log.error("model %s: invalid %s: %s", model_dir.name, CONFIG_FILE, exc)
            placeholder = ModelConfig(name=model_dir.name, classes=["?"])
            entries.append(ModelEntry(config=placeholder, root=model_dir, version=None, error=f"invalid config: {exc}"))
            continue
        version = latest_version(model_dir)
        error = None if version is not None else "no version folder (e.g. 1/) with artifacts"
        entries.append(ModelEntry(config=config, root=model_dir, version=version, error=error))
    return entries

"""Which folders become which packages: the runtime (``service/``) installs as ``segserve``;
the build side (``models/``, ``loadtest/``) as ``segserve_models`` and ``segserve_loadtest``
when those folders are present. A runtime-only tree (the container image's, which copies
``service/`` alone) builds a wheel without them. Everything else is in pyproject.toml."""

from pathlib import Path

from setuptools import find_namespace_packages, setup

FOLDERS = {"segserve": "service", "segserve_models": "models", "segserve_loadtest": "loadtest"}
present = {package: folder for package, folder in FOLDERS.items() if Path(folder, "__init__.py").is_file()}
# Every folder holding Python modules is a package, with or without an __init__.py (implicit
# namespace packages such as service/pipelines/video would be left out by find_packages).
packages = [sub for package, folder in present.items()
            for sub in [package, *(f"{package}.{p}" for p in find_namespace_packages(folder, exclude=["*__pycache__*"])
                                   if any(Path(folder, *p.split(".")).glob("*.py")))]]

setup(package_dir=present, packages=packages)

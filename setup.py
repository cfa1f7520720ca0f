"""Which folders become which packages: the runtime (``service/``) installs as ``segserve``;
the build side (``models/``, ``loadtest/``) as ``segserve_models`` and ``segserve_loadtest``
when those folders are present. A runtime-only tree (the container image's, which copies
``service/`` alone) builds a wheel without them. Everything else is in pyproject.toml."""

from pathlib import Path

from setuptools import find_packages, setup

FOLDERS = {"segserve": "service", "segserve_models": "models", "segserve_loadtest": "loadtest"}
present = {package: folder for package, folder in FOLDERS.items() if Path(folder, "__init__.py").is_file()}
packages = [sub for package, folder in present.items() for sub in [package, *(f"{package}.{p}" for p in find_packages(folder))]]

setup(package_dir=present, packages=packages)

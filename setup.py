"""Build script.

The Triton kernels live in the top-level ``kernels/`` folder and are installed as the
``vita_clip.kernels`` subpackage, so that the import name cannot clash with other
distributions that ship a top-level ``kernels`` module.
"""
from setuptools import find_packages, setup

packages = find_packages(include=["vita_clip", "vita_clip.*"]) + ["vita_clip.kernels"]

setup(
    packages=packages,
    package_dir={"vita_clip": "vita_clip", "vita_clip.kernels": "kernels"},
    package_data={"vita_clip": ["model_configs/*.json", "resources/**/*"]},
    include_package_data=True,
)

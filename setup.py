"""Build script.

The Triton kernels live in the top-level ``kernels/`` folder and are installed as the
``vita_clip.kernels`` subpackage, so that the import name cannot clash with other
distributions that ship a top-level ``kernels`` module.

The C++ CPU kernel of the prompt attention (``csrc/``) is built as the optional extension
``vita_clip.kernels._prompt_attention_cpu`` with ``torch.utils.cpp_extension``. torch must be
importable while building (``pip install --no-build-isolation``, see the Makefile); without
torch, or when compiling fails, the package is installed without it and the CPU op falls back
to the composite (one warning at run time). ``VITA_CLIP_NO_EXTENSION=1`` skips the build.
"""
import os
import sys

from setuptools import find_packages, setup

packages = find_packages(include=["vita_clip", "vita_clip.*"]) + ["vita_clip.kernels"]
EXTENSION = "vita_clip.kernels._prompt_attention_cpu"


def note(message: str) -> None:
    print(f"vita-clip setup: {message}", file=sys.stderr)


def extension_args() -> dict:
    """``ext_modules`` and ``cmdclass`` for the C++ extension, or nothing if it cannot be built."""
    if os.environ.get("VITA_CLIP_NO_EXTENSION") == "1":
        note("VITA_CLIP_NO_EXTENSION=1: the C++ CPU kernel is not built")
        return {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except Exception as e:  # no torch in the build environment (pip's build isolation)
        note(f"torch is not importable ({e.__class__.__name__}); the C++ CPU kernel is not built "
             "(install with `pip install --no-build-isolation` to build it)")
        return {}

    class OptionalBuildExtension(BuildExtension):
        """A failed build (no or broken compiler) leaves the package without the extension
        instead of failing the install."""

        def run(self):
            try:
                super().run()
            except Exception as e:
                note(f"building the C++ CPU kernel failed ({e.__class__.__name__}: {e}); "
                     "prompt_attention will use the composite on CPU")
                self.extensions = []
                self.distribution.ext_modules = []

    # OpenMP: at::parallel_for is a header template that runs serially unless the extension itself
    # is compiled with OpenMP; at run time the symbols bind to the libgomp torch has loaded.
    if sys.platform == "win32":
        compile_args, link_args = ["/O2", "/openmp"], []
    else:
        compile_args, link_args = ["-O3", "-fopenmp"], ["-fopenmp"]
    ext = CppExtension(EXTENSION, ["csrc/prompt_attention.cpp"], extra_compile_args=compile_args,
                       extra_link_args=link_args)
    return {"ext_modules": [ext], "cmdclass": {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}}


setup(
    packages=packages,
    package_dir={"vita_clip": "vita_clip", "vita_clip.kernels": "kernels"},
    package_data={"vita_clip": ["models/model_configs/*.json", "configs/*.yaml", "resources/**/*"]},
    include_package_data=True,
    **extension_args(),
)

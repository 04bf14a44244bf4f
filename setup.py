"""Build the native core ``obfgrad._C`` from ``csrc/``.

Every ``csrc/cpu/*.cpp`` is compiled into one pybind11 extension; kernel bodies live in
``csrc/include/obfgrad/*.h`` and are shared with the CUDA drivers in ``csrc/cuda/``, which
are compiled at run time (NVRTC through CuPy) and are therefore shipped as package data.

Environment variables:
  OBFGRAD_MARCH_NATIVE=1  add -march=native (faster, not portable to other CPUs)
  OBFGRAD_SANITIZE=1      build with AddressSanitizer + UBSan (used by ``nox -s sanitize``)
  OBFGRAD_DEBUG=1         -O0 -g
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from glob import glob
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

try:
    from pybind11.setup_helpers import Pybind11Extension
except ImportError:  # pragma: no cover - pyproject lists pybind11 as a build requirement
    sys.exit("obfgrad: building the native core needs pybind11 (pip install pybind11).")

ROOT = Path(__file__).resolve().parent


def _version() -> str:
    """``__version__`` of obfgrad/__init__.py, the one place the version is written (pyproject.toml
    reads it too), without importing the package (its native core is not built yet)."""
    match = re.search(r'^__version__ = "([^"]+)"', (ROOT / "obfgrad" / "__init__.py").read_text(), re.MULTILINE)
    if match is None:
        sys.exit("obfgrad: no __version__ = \"...\" line in obfgrad/__init__.py")
    return match.group(1)


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _compile_flags() -> "tuple[list[str], list[str]]":
    # -ffp-contract=off: no fused multiply-add, so the CPU and the GPU (NVRTC is run with
    # --fmad=false) round every product identically and outputs agree bit for bit.
    compile_args = ["-fopenmp", "-ffp-contract=off", "-fvisibility=hidden"]
    link_args = ["-fopenmp"]
    if _flag("OBFGRAD_DEBUG"):
        compile_args += ["-O0", "-g"]
    else:
        compile_args += ["-O3"]
    if _flag("OBFGRAD_MARCH_NATIVE"):
        compile_args.append("-march=native")
    if _flag("OBFGRAD_SANITIZE"):
        sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
        compile_args += sanitize + ["-O1", "-g"]
        link_args += sanitize
    return compile_args, link_args


def _build_flavour() -> str:
    flags = [name for name in ("OBFGRAD_SANITIZE", "OBFGRAD_DEBUG", "OBFGRAD_MARCH_NATIVE") if _flag(name)]
    return "-".join(flag.split("_", 1)[1].lower() for flag in flags) or "release"


class BuildExtWithChecks(build_ext):
    """Fail early, with a message a user can act on, when the toolchain is missing."""

    def finalize_options(self):
        super().finalize_options()
        # Object files of differently-flagged builds (sanitizer, -march=native) never mix:
        # setuptools only recompiles when a source is newer, not when flags change.
        self.build_temp = os.path.join(self.build_temp, _build_flavour())
        # ...and the linked module is rebuilt when the flavour differs from the last build.
        stamp = Path(self.build_temp).parent / "last-flavour"
        if not stamp.exists() or stamp.read_text() != _build_flavour():
            self.force = True

    def run(self):
        super().run()
        stamp = Path(self.build_temp).parent / "last-flavour"
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(_build_flavour())

    def build_extensions(self):
        compiler = self.compiler.compiler_cxx[0] if getattr(self.compiler, "compiler_cxx", None) else "c++"
        if shutil.which(compiler) is None:
            sys.exit(
                f"obfgrad: no C++ compiler found ({compiler!r}). Install one (Debian/Ubuntu: "
                "apt-get install g++) and retry; obfgrad needs a C++17 compiler with OpenMP."
            )
        if not self._has_openmp(compiler):
            sys.exit(
                f"obfgrad: the C++ compiler {compiler!r} cannot build OpenMP code. Install "
                "a compiler with OpenMP (gcc's libgomp, or clang with libomp-dev) and retry."
            )
        super().build_extensions()

    @staticmethod
    def _has_openmp(compiler: str) -> bool:
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "omp_probe.cpp"
            source.write_text("#include <omp.h>\nint main(){return omp_get_max_threads() > 0 ? 0 : 1;}\n")
            probe = subprocess.run(
                [compiler, "-fopenmp", str(source), "-o", str(Path(tmp) / "omp_probe")],
                capture_output=True,
            )
            return probe.returncode == 0


class BuildPyWithKernelSources(build_py):
    """Ship the CUDA drivers and kernel headers inside the package (obfgrad/_csrc)."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "obfgrad" / "_csrc"
        for sub in ("include", "cuda"):
            if target.joinpath(sub).exists():
                shutil.rmtree(target / sub)
            shutil.copytree(ROOT / "csrc" / sub, target / sub)


compile_args, link_args = _compile_flags()
sources = sorted(str(Path(p).relative_to(ROOT)) for p in glob(str(ROOT / "csrc" / "cpu" / "*.cpp")))

setup(
    ext_modules=[
        Pybind11Extension(
            "obfgrad._C",
            sources,
            include_dirs=["csrc/include", "csrc/cpu"],
            # Headers hold the kernel bodies: a change to one must rebuild every driver.
            depends=sorted(glob("csrc/include/obfgrad/*.h") + glob("csrc/cpu/*.h")),
            cxx_std=17,
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            define_macros=[("OBFGRAD_VERSION", f'"{_version()}"')],
        )
    ],
    cmdclass={"build_ext": BuildExtWithChecks, "build_py": BuildPyWithKernelSources},
)

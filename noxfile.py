"""nox sessions: tests, bench, cuda, sanitize, lint, reproduce.

Every session installs torch FIRST, from ``OBFGRAD_TORCH`` (default ``torch==2.13.0``, a CPU
wheel), so the package's own range requirement (``torch>=2.1``) is already met and pip never
pulls a multi-GB CUDA build by accident. GPU users choose their build, e.g.

    OBFGRAD_TORCH="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124" nox -s tests
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

TORCH = os.environ.get("OBFGRAD_TORCH", "torch==2.13.0")
CUDA_ARCHS = ("sm_80", "sm_90")
NVRTC_PACKAGES = ("cupy-cuda12x", "nvidia-cuda-nvrtc-cu12")


def _install_torch(session: nox.Session) -> None:
    session.install(*shlex.split(TORCH))


def _install_package(session: nox.Session, extras: str = "", *, env: dict | None = None) -> None:
    # pip rebuilds and reinstalls a local directory every time, so a reused venv is never stale.
    session.install(f".[{extras}]" if extras else ".", env=env)


def _op_names() -> list[str]:
    return sorted(p.stem for p in (ROOT / "csrc" / "cpu").glob("*.cpp") if p.stem != "module")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite against the installed package, native backend required."""
    _install_torch(session)
    _install_package(session, "test")
    session.run(
        "pytest", "-p", "no:cacheprovider", *(session.posargs or ["tests"]),
        env={"OBFGRAD_REQUIRE_NATIVE": "1"},
    )


@nox.session
def bench(session: nox.Session) -> None:
    """pytest-benchmark suite (2 threads); saves JSON under .benchmarks/ for comparisons."""
    _install_torch(session)
    _install_package(session, "test,bench")
    session.run(
        "pytest", "benchmarks", "-p", "no:cacheprovider", "-o", "python_files=bench_*.py",
        "--benchmark-autosave", "--benchmark-storage=file://.benchmarks",
        "--benchmark-columns=min,median,max,rounds", "--benchmark-sort=name", *session.posargs,
        env={"OBFGRAD_REQUIRE_NATIVE": "1"},
    )


@nox.session
def cuda(session: nox.Session) -> None:
    """Compile every csrc/cuda/*.cu for sm_80 and sm_90 without a GPU: NVRTC (the runtime's own
    compiler path) and, when present, nvcc; any error or warning fails the session."""
    _install_torch(session)
    session.install(*NVRTC_PACKAGES, "pytest")
    _install_package(session)
    ops = sorted(p.stem for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
    session.run("python", "-c", (
        "from obfgrad._native import compile_cuda_source\n"
        f"for op in {ops!r}:\n"
        f"    for arch in {CUDA_ARCHS!r}:\n"
        "        size = len(compile_cuda_source(op, arch))\n"
        "        print(f'NVRTC {op} {arch}: {size} bytes of CUBIN')\n"
    ))
    # Every launch is checked against the kernel signatures parsed from these sources: they must
    # agree with the parameters NVRTC compiles (PTX), kernel by kernel.
    session.run("pytest", "-p", "no:cacheprovider", "-q", "tests/test_cuda_host_shim.py", "-k", "ptx")
    nvcc = _find_nvcc()
    if nvcc is None:
        session.log("nvcc not found: NVRTC check only")
        return
    for op in ops:
        for arch in CUDA_ARCHS:
            session.run(
                nvcc, f"-arch={arch}", "-std=c++17", "--fmad=false", "-Werror", "all-warnings",
                "-Xcompiler", "-Wall,-Werror", f"-I{ROOT / 'csrc' / 'include'}", "-cubin",
                "-o", os.devnull, str(ROOT / "csrc" / "cuda" / f"{op}.cu"), external=True,
            )


def _find_nvcc() -> str | None:
    for candidate in (os.environ.get("NVCC"), "nvcc", "/usr/local/cuda/bin/nvcc"):
        if candidate and subprocess.run(["which", candidate], capture_output=True).returncode == 0:
            return candidate
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@nox.session
def sanitize(session: nox.Session) -> None:
    """Build _C with AddressSanitizer + UBSan and run every op's tests against it."""
    _install_torch(session)
    env = {"OBFGRAD_SANITIZE": "1"}
    _install_package(session, "test", env=env)
    # libstdc++ is preloaded with the ASan runtime: python itself does not link it, and ASan's
    # __cxa_throw interceptor must find the real one at start-up or every C++ throw aborts.
    libasan, libstdcxx = (
        subprocess.run(["gcc", f"-print-file-name={lib}"], capture_output=True, text=True, check=True).stdout.strip()
        for lib in ("libasan.so", "libstdc++.so")
    )
    preload = f"{libasan} {libstdcxx}"
    op_tests = [f"tests/test_{op}.py" for op in _op_names() if (ROOT / "tests" / f"test_{op}.py").exists()]
    # From outside the repo, so the installed (instrumented) package is the one imported.
    with session.chdir(session.create_tmp()):
        session.run(
            "python", "-c", "import obfgrad._C as c, sys; sys.exit(0 if c.build_info['sanitizers'] else 1)",
            env={"LD_PRELOAD": preload, "ASAN_OPTIONS": "detect_leaks=0"},
        )
    session.run(
        "pytest", "-p", "no:cacheprovider", "-x", *op_tests, *session.posargs,
        env={
            "LD_PRELOAD": preload,
            # Python and torch keep allocations alive at exit by design: leak reports are noise.
            "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:strict_string_checks=1",
            "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
            "OBFGRAD_REQUIRE_NATIVE": "1",
            "OMP_NUM_THREADS": "2",
        },
    )


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "obfgrad", "tests", "benchmarks", "reproduce", "noxfile.py", "setup.py")


@nox.session
def reproduce(session: nox.Session) -> None:
    """Regenerate Table 1 (smoke profile by default): nox -s reproduce -- --rows madry,na"""
    _install_torch(session)
    # Editable: `python -m reproduce` runs from the repo root, where ./obfgrad is first on
    # sys.path; an editable install builds obfgrad._C right there.
    session.install("-e", ".[reproduce]")
    # The data first: found, downloaded, or (Debian/Ubuntu as root, as .ci/run does) installed
    # with apt-get, and checksum-verified, before any model is trained (reproduce/dataset_setup.py).
    session.run("python", "-m", "reproduce.dataset_setup", *session.posargs)
    session.run("python", "-m", "reproduce", *session.posargs)

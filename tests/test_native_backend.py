"""obfgrad._native.choose_backend: the one place that picks an op's backend (CUDA kernels, the
compiled CPU extension, the pure-torch reference) for a tensor's device, with the same fallback
for every op. The availability of CuPy and of obfgrad._C is faked, so this runs on any CPU."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

from obfgrad import _native
from obfgrad.ops import tv_op as tv_module
from obfgrad.ops.jpeg_op import jpeg
from obfgrad.ops.jpeg_op import reference as jpeg_reference
from obfgrad.ops.quilt_op import quilt
from obfgrad.ops.quilt_op import reference as quilt_reference
from obfgrad.ops.thermometer_op import thermometer, thermometer_reference
from obfgrad.ops.tv_op import tv_mask, tv_minimize

ROOT = Path(__file__).resolve().parents[1]
OPS = ("jpeg", "thermometer", "tv", "quilt")


@pytest.fixture
def no_cupy(monkeypatch):
    """CuPy fails to import; no op has warned yet; the native fallback is allowed."""
    monkeypatch.setattr(_native, "_cupy_error", lambda: "ImportError: No module named 'cupy'")
    monkeypatch.setattr(_native, "_warned_cuda_fallback", set())
    monkeypatch.delenv("OBFGRAD_REQUIRE_NATIVE", raising=False)


@pytest.fixture
def no_extension(monkeypatch):
    """obfgrad._C fails to import; its one warning not given yet; the fallback is allowed."""
    monkeypatch.setattr(_native, "_load_extension", lambda: (None, "ImportError: no _C"))
    monkeypatch.setattr(_native, "_warned_fallback", False)
    monkeypatch.delenv("OBFGRAD_REQUIRE_NATIVE", raising=False)


@pytest.mark.parametrize("op", OPS)
def test_cuda_tensors_get_the_cuda_kernels_when_cupy_loads(monkeypatch, op):
    monkeypatch.setattr(_native, "_cupy_error", lambda: None)
    assert _native.choose_backend(op, torch.device("cuda", 0)) == "cuda"
    assert _native.choose_backend(op, "cuda") == "cuda"


@pytest.mark.parametrize("op", OPS)
def test_cuda_tensors_without_cupy_run_the_reference_and_warn_once_per_op(no_cupy, op):
    with pytest.warns(RuntimeWarning, match=rf"CuPy did not load.*\b{op} on CUDA tensors runs its slower"):
        assert _native.choose_backend(op, torch.device("cuda")) == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call of the same op stays quiet
        assert _native.choose_backend(op, torch.device("cuda")) == "reference"
    other = next(name for name in OPS if name != op)
    with pytest.warns(RuntimeWarning, match=rf"\b{other} on CUDA"):
        _native.choose_backend(other, torch.device("cuda"))


def test_cuda_without_cupy_is_an_error_when_native_code_is_required(no_cupy, monkeypatch):
    monkeypatch.setenv("OBFGRAD_REQUIRE_NATIVE", "1")
    with pytest.raises(RuntimeError, match=r"tv cannot run its CUDA kernels.*OBFGRAD_REQUIRE_NATIVE=1"):
        _native.choose_backend("tv", torch.device("cuda"))


@pytest.mark.parametrize(("torch_cuda", "extra"), [("12.4", "cuda12"), ("13.0", "cuda13")])
def test_the_warning_names_the_extra_of_torchs_cuda_major(no_cupy, monkeypatch, torch_cuda, extra):
    monkeypatch.setattr(torch.version, "cuda", torch_cuda)
    with pytest.warns(RuntimeWarning) as caught:
        _native.choose_backend("jpeg", torch.device("cuda"))
    message = str(caught[0].message)
    assert f"pip install 'obfgrad[{extra}]'" in message
    assert f"cupy-{extra}x" in message


def test_every_extra_the_hint_names_exists_in_pyproject(monkeypatch):
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for torch_cuda in ("12.1", "13.0", None):
        monkeypatch.setattr(torch.version, "cuda", torch_cuda)
        named = re.findall(r"obfgrad\[(\w+)\]", _native.cupy_install_hint())
        assert named, _native.cupy_install_hint()
        for extra in named:
            assert extra in extras
            assert any(dep.startswith(f"cupy-{extra}x") for dep in extras[extra])


def test_cpu_tensors_get_the_extension_when_it_loads(monkeypatch):
    monkeypatch.setattr(_native, "_load_extension", lambda: (object(), None))
    assert _native.choose_backend("quilt", torch.device("cpu")) == "native"


def test_cpu_tensors_without_the_extension_run_the_reference(no_extension):
    with pytest.warns(RuntimeWarning, match="obfgrad._C did not load"):
        assert _native.choose_backend("thermometer", torch.device("cpu")) == "reference"


def test_cpu_without_the_extension_is_an_error_when_native_code_is_required(no_extension, monkeypatch):
    monkeypatch.setenv("OBFGRAD_REQUIRE_NATIVE", "1")
    with pytest.raises(RuntimeError, match="OBFGRAD_REQUIRE_NATIVE=1 forbids"):
        _native.choose_backend("jpeg", torch.device("cpu"))


def test_other_devices_run_the_reference(monkeypatch):
    monkeypatch.setattr(_native, "_cupy_error", lambda: None)
    monkeypatch.setattr(_native, "_load_extension", lambda: (object(), None))
    assert _native.choose_backend("jpeg", torch.device("mps")) == "reference"


def _record_choices(monkeypatch, forced: str | None = None) -> list[tuple[str, str]]:
    """Spy on choose_backend; with ``forced``, every op is told to run that backend."""
    calls: list[tuple[str, str]] = []
    real = _native.choose_backend

    def spy(op, device):
        calls.append((op, torch.device(device).type))
        return forced if forced is not None else real(op, device)

    monkeypatch.setattr(_native, "choose_backend", spy)
    return calls


def test_every_op_asks_the_chooser(monkeypatch):
    calls = _record_choices(monkeypatch)
    x = torch.rand(1, 3, 11, 13, generator=torch.Generator().manual_seed(0))
    jpeg(x)
    thermometer(x)
    tv_mask(x.shape, seed=1)
    tv_minimize(x, seed=1, max_iter=2)
    quilt(x, torch.rand(40, 3, 5, 5, generator=torch.Generator().manual_seed(1)), k=2, seed=3)
    assert {op for op, _ in calls} == set(OPS)
    assert {device for _, device in calls} == {"cpu"}


class _KernelsForbidden:
    """The native module with the ops' kernel entries taken away (the patch database's helpers,
    which prepare data for any backend, stay)."""

    KERNELS = {"jpeg_forward", "jpeg_backward_linear", "thermometer_forward", "thermometer_backward", "tv_mask",
               "tv_minimize", "quilt_knn", "quilt_assemble"}

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        if name in self.KERNELS:
            raise AssertionError(f"{name}: an op ran its native kernel after the chooser said reference")
        return getattr(self._module, name)


def test_every_op_has_a_reference_branch_for_what_the_chooser_sends_there(monkeypatch):
    # What a CUDA tensor without CuPy gets: the reference, same answers as the reference functions
    # (quilting had no such branch on CUDA before the chooser).
    _record_choices(monkeypatch, forced="reference")
    monkeypatch.setattr(_native, "native", lambda: _KernelsForbidden(_native.require_native()))
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 11, 13, generator=gen)
    database = torch.rand(60, 3, 5, 5, generator=gen)
    assert torch.equal(jpeg(x), jpeg_reference(x))
    assert torch.equal(thermometer(x, 8), thermometer_reference(x, 8))
    assert torch.equal(quilt(x, database, k=3, seed=4), quilt_reference(x, database, k=3, seed=4))
    assert torch.equal(tv_minimize(x, seed=5), tv_module.reference(x, seed=5).float())
    assert torch.equal(tv_mask(x, 0.5, seed=5), tv_module._mask_reference(2, 11, 13, 0.5, 5))


def test_no_op_module_decides_about_cupy_itself():
    for path in sorted((ROOT / "obfgrad" / "ops").glob("*.py")):
        text = path.read_text()
        assert "import cupy" not in text and "_cuda_ready" not in text, f"{path.name}: use _native.choose_backend"
        if "launch_cuda" in text:
            assert "_native.choose_backend(" in text, path.name

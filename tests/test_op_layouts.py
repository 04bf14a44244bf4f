"""Every registered op gives the same answer for any memory layout of its inputs, and no entry
point of the native extension accepts an output buffer it cannot write in place (issue 15,
case 1: a channels_last input once came back as uninitialised memory)."""

import numpy as np
import pytest
import torch

import obfgrad.ops.jpeg_op  # noqa: F401  (registers torch.ops.obfgrad.jpeg_*)
import obfgrad.ops.thermometer_op  # noqa: F401
import obfgrad.ops.tv_op  # noqa: F401
from obfgrad._native import native
from obfgrad.data.patch_db import search_projections
from obfgrad.ops.quilt_op import _quilt_op

C = native()
needs_native = pytest.mark.skipif(C is None, reason="obfgrad._C is not built")


def _images(n=2, c=3, h=13, w=11, seed=0):
    return torch.rand((n, c, h, w), generator=torch.Generator().manual_seed(seed))


def _layouts(x: torch.Tensor):
    """The same values as ``x`` in three layouts: contiguous, channels_last, and a strided view
    into a larger buffer (every other column)."""
    n, c, h, w = x.shape
    wide = torch.full((n, c, h, 2 * w), -7.0)
    wide[..., ::2] = x
    strided = wide[..., ::2]
    assert not strided.is_contiguous() and torch.equal(strided, x)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    assert not channels_last.is_contiguous()
    return {"contiguous": x.contiguous(), "channels_last": channels_last, "strided": strided}


def _quilt_args(x, database_size=200, size=5, k=4, overlap=2, seed=7):
    database = torch.rand(database_size, x.shape[1] * size * size, generator=torch.Generator().manual_seed(1))
    proj = torch.from_numpy(search_projections(database.numpy(), x.shape[1]))
    return (x, database, (database * database).sum(1), proj, size, k, overlap, seed)


# (op, arguments given the image batch x); grad_out-style second tensors follow x's layout.
OPS = {
    "thermometer_encode": lambda x: (torch.ops.obfgrad.thermometer_encode.default, (x, 16, 0)),
    "thermometer_bpda_backward": lambda x: (torch.ops.obfgrad.thermometer_bpda_backward.default,
                                            (x, _same_layout(x, torch.randn(x.shape[0], x.shape[1] * 4, *x.shape[2:],
                                                                       generator=torch.Generator().manual_seed(2))),
                                             4, 0)),
    "jpeg_roundtrip": lambda x: (torch.ops.obfgrad.jpeg_roundtrip.default, (x, 75, True, 1)),
    "jpeg_linear_backward": lambda x: (torch.ops.obfgrad.jpeg_linear_backward.default, (x - 0.5, True)),
    "tv_minimize": lambda x: (torch.ops.obfgrad.tv_minimize.default, (x, 0.5, 66.7, 1e-3, 20, 3, False)),
    "quilt": lambda x: (_quilt_op, _quilt_args(x)),
}


def _same_layout(like: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    if like.is_contiguous():
        return values.contiguous()
    if like.is_contiguous(memory_format=torch.channels_last):
        return values.contiguous(memory_format=torch.channels_last)
    return _layouts(values)["strided"]


def _outputs(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("op_name", sorted(OPS))
def test_every_registered_op_gives_the_same_answer_for_every_layout(op_name):
    answers = {}
    for layout, x in _layouts(_images()).items():
        op, args = OPS[op_name](x)
        answers[layout] = _outputs(op(*args))
    for layout in ("channels_last", "strided"):
        for got, want in zip(answers[layout], answers["contiguous"]):
            assert torch.isfinite(got.float()).all(), f"{op_name} on {layout}: non-finite output"
            assert torch.equal(got, want), f"{op_name} on {layout} differs from the contiguous input"


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("op_name", sorted(OPS))
def test_opcheck_on_non_contiguous_inputs(op_name, layout):
    op, args = OPS[op_name](_layouts(_images(h=10, w=10))[layout])
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def _strided_tensor(values: torch.Tensor) -> torch.Tensor:
    """``values`` as a non-contiguous view (every other element of the last dimension)."""
    wide = torch.zeros(values.shape[:-1] + (2 * values.shape[-1],), dtype=values.dtype)
    wide[..., ::2] = values
    assert not wide[..., ::2].is_contiguous()
    return wide[..., ::2]


def test_registered_tv_op_reads_a_strided_mask_like_a_contiguous_one():
    x = _images(h=10, w=10)
    mask = torch.rand(2, 10, 10, generator=torch.Generator().manual_seed(4)) < 0.5
    answers = [torch.ops.obfgrad.tv_minimize(x, 0.5, 66.7, 1e-3, 20, 0, False, False, given)[0]
               for given in (mask, _strided_tensor(mask), mask.to(torch.uint8))]
    assert not torch.equal(answers[0], torch.ops.obfgrad.tv_minimize(x, 0.5, 66.7, 1e-3, 20, 0, False)[0])
    for got in answers[1:]:
        assert torch.equal(got, answers[0])


def test_registered_quilt_op_reads_strided_choices_and_database_like_contiguous_ones():
    x = _images(h=8, w=8)
    args = list(_quilt_args(x))
    choices = torch.randint(0, 200, (2, 4, 1), generator=torch.Generator().manual_seed(5))
    want = _quilt_op(*args, 0, choices)
    args[1] = _strided_tensor(args[1])
    assert torch.equal(_quilt_op(*args, 0, _strided_tensor(choices)), want)
    assert not torch.equal(want, _quilt_op(*args, 0, choices.flip(1)))  # the choices are read


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_public_ops_backward_with_non_contiguous_gradients(layout):
    from obfgrad.ops.jpeg_op import jpeg
    from obfgrad.ops.thermometer_op import thermometer

    x = _images(h=8, w=8)
    for fn, kwargs in ((thermometer, {"levels": 4}), (jpeg, {"backward": "linear"})):
        grads = {}
        for name, variant in (("contiguous", x.contiguous()), (layout, _layouts(x)[layout])):
            leaf = variant.clone().requires_grad_(True) if name == "contiguous" else variant.requires_grad_(True)
            out = fn(leaf, **kwargs)
            weights = _same_layout(variant, torch.linspace(-1, 1, out.numel()).view(out.shape))
            (out * weights).sum().backward()
            grads[name] = leaf.grad.contiguous()
        assert torch.equal(grads[layout], grads["contiguous"]), fn.__name__


# ------------------------------------------------------------------------ the native entry points


def _native_calls():
    """Every _C function that writes into a buffer: (name, call(outputs) -> None, outputs)."""
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 9, 9), dtype=np.float32)
    luma = np.full(64, 16, np.int32)
    database = rng.random((50, 75), dtype=np.float32)
    sq = np.einsum("ij,ij->i", database, database).astype(np.float32)
    proj = search_projections(database, 3)
    queries = rng.random((4, 75), dtype=np.float32)
    neighbours = np.zeros((1, 4, 2), np.int64)
    return [
        ("thermometer_forward", lambda o: C.thermometer_forward(x, o[0], 4), [np.zeros((2, 12, 9, 9), np.float32)]),
        ("thermometer_backward", lambda o: C.thermometer_backward(x, np.ones((2, 12, 9, 9), np.float32), o[0], 4, 0),
         [np.zeros((2, 3, 9, 9), np.float32)]),
        ("jpeg_forward", lambda o: C.jpeg_forward(x, o[0], luma, luma, True), [np.zeros((2, 3, 9, 9), np.float32)]),
        ("jpeg_backward_linear", lambda o: C.jpeg_backward_linear(x, o[0], True), [np.zeros((2, 3, 9, 9), np.float32)]),
        ("tv_minimize", lambda o: C.tv_minimize(x, o[0], o[1], 0.5, 66.7, 1e-3, 5, 1, False),
         [np.zeros((2, 3, 9, 9), np.float32), np.zeros(2, np.int32)]),
        ("tv_mask", lambda o: C.tv_mask(o[0], 0.5, 3), [np.zeros((2, 9, 9), np.uint8)]),
        ("quilt_min_cut", lambda o: C.quilt_min_cut(rng.random((5, 2), dtype=np.float32), o[0]),
         [np.zeros(5, np.int32)]),
        ("quilt_knn", lambda o: C.quilt_knn(queries, database, sq, proj, 3, 2, o[0], o[1]),
         [np.zeros((4, 2), np.int64), np.zeros((4, 2), np.float32)]),
        ("quilt_projections", lambda o: C.quilt_projections(database, 3, o[0]), [np.zeros_like(proj)]),
        ("quilt_storage_order", lambda o: C.quilt_storage_order(proj, o[0]), [np.zeros(50, np.int64)]),
        ("quilt_sq_norms", lambda o: C.quilt_sq_norms(database, o[0]), [np.zeros(50, np.float32)]),
        ("quilt_assemble", lambda o: C.quilt_assemble(database, neighbours, 3, o[0], 5, 2),
         [np.zeros((1, 3, 8, 8), np.float32)]),
    ]


def _strided_copy(array: np.ndarray) -> np.ndarray:
    """An array with ``array``'s shape and dtype that is a non-contiguous view of a larger buffer."""
    wide = np.zeros(array.shape[:-1] + (2 * array.shape[-1],), array.dtype)
    view = wide[..., ::2]
    assert not view.flags.c_contiguous
    return view


@needs_native
@pytest.mark.parametrize("name,call,outputs", _native_calls(), ids=[c[0] for c in _native_calls()])
def test_native_entry_points_write_only_into_buffers_they_can_write_in_place(name, call, outputs):
    call(outputs)  # the well-formed call works
    assert any(np.any(o != 0) for o in outputs), f"{name} wrote nothing"
    for position in range(len(outputs)):
        strided = list(outputs)
        strided[position] = _strided_copy(outputs[position])
        with pytest.raises(TypeError):
            call(strided)
        assert not np.any(strided[position]), f"{name}: a strided output was partly written"
        other_dtype = list(outputs)
        other_dtype[position] = np.zeros(outputs[position].shape, np.float64)
        with pytest.raises(TypeError):
            call(other_dtype)
        read_only = [o.copy() for o in outputs]
        read_only[position].flags.writeable = False
        with pytest.raises(ValueError, match="read-only"):
            call(read_only)

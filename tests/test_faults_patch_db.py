"""The quilting patch database read back from disk is verified, never trusted blindly (issue 15,
cases 4, 5, 6 and the fault-injection table): every damaged file is refused with a
PatchDatabaseError naming it, and a database that loaded stays what was verified."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import obfgrad
from obfgrad.data.patch_db import (
    PatchDatabase,
    PatchDatabaseError,
    authors_resize,
    build_patch_database,
    load_patch_database,
    patch_database_from_array,
    save_patch_database,
)
from obfgrad.ops.quilt_op import quilt


def small_database(count=600, channels=3):
    rng = np.random.default_rng(0)
    images = [rng.random((24, 24, 3), dtype=np.float32) for _ in range(4)]
    return build_patch_database(images, count, channels=channels, long_side=None, seed=1)


@pytest.fixture
def saved(tmp_path):
    database = small_database()
    return save_patch_database(database, tmp_path / "db.npy"), database


def _header_length(raw: bytes) -> int:
    """Bytes before the array data of a version-1 .npy file."""
    return 10 + int.from_bytes(raw[8:10], "little")


# ------------------------------------------------------------------------ case 4: range, finiteness


@pytest.mark.parametrize("values,match", [
    (lambda p: p * 255.0, r"\[0, 1\].*found values in \[0\.\d+, 25\d"),
    (lambda p: np.where(np.arange(p.size).reshape(p.shape) == 17, np.nan, p), "NaN or Inf"),
    (lambda p: np.where(np.arange(p.size).reshape(p.shape) == 3, np.inf, p), "NaN or Inf"),
    (lambda p: p - 0.5, r"found values in \[-0\.4"),
])
def test_a_database_outside_0_1_is_refused_when_built_or_loaded(tmp_path, values, match):
    patches = values(np.random.default_rng(0).random((50, 3, 5, 5), dtype=np.float32)).astype(np.float32)
    with pytest.raises(PatchDatabaseError, match=match):
        PatchDatabase(patches, {})
    with pytest.raises(ValueError, match="patches: expected finite values in"):
        patch_database_from_array(patches)
    with pytest.raises(ValueError, match="database: expected finite patches in"):
        quilt(torch.rand(1, 3, 8, 8), torch.from_numpy(patches), seed=0)
    # A file holding such values with a matching sidecar and checksum is refused on load too.
    good = small_database()
    bad = values(np.array(good.patches)).astype(np.float32)
    np.save(tmp_path / "scaled.npy", bad)
    meta = dict(good.meta)
    meta["sha256"] = __import__("hashlib").sha256(bad.tobytes()).hexdigest()
    (tmp_path / "scaled.json").write_text(json.dumps(meta))
    with pytest.raises(PatchDatabaseError, match=match):
        load_patch_database(tmp_path / "scaled.npy")


def test_one_pixel_patches_get_a_clear_error():
    with pytest.raises(ValueError, match="1x1 patches are too small"):
        quilt(torch.rand(1, 3, 8, 8), torch.rand(20, 3, 1, 1), seed=0)
    with pytest.raises(PatchDatabaseError, match="P >= 2"):
        PatchDatabase(np.random.default_rng(0).random((20, 3, 1, 1), dtype=np.float32), {})


def _image(seed=0):
    return np.random.default_rng(seed).random((20, 30, 3), dtype=np.float32)


BUILD_CASES = [
    ("one image, not a list", lambda: build_patch_database(_image(), 10), ValueError,
     r"images: got one \(20, 30, 3\) array, expected a sequence of images"),
    ("one image tensor", lambda: build_patch_database(torch.rand(20, 30), 10), ValueError, "images: got one"),
    ("one path, not a list", lambda: build_patch_database("photo.jpg", 10, recipe="authors"), TypeError,
     "images: expected a sequence of images"),
    ("paths in the uniform recipe", lambda: build_patch_database(["photo.jpg"], 10), TypeError,
     "images: file paths .* are read by recipe='authors' only"),
    ("seed negative", lambda: build_patch_database([_image()], 10, seed=-1), ValueError, "seed: expected an int >= 0"),
    ("seed float", lambda: build_patch_database([_image()], 10, seed=1.5), TypeError, "seed: expected an int"),
    ("long_side 0", lambda: build_patch_database([_image()], 10, long_side=0), ValueError,
     "long_side: expected an int >= 5"),
    ("long_side below the patch", lambda: build_patch_database([_image()], 10, long_side=3, recipe="authors"),
     ValueError, "long_side: expected an int >= 5"),
    ("patch above the kernels' maximum", lambda: build_patch_database([_image()], 10, patch_size=17), ValueError,
     r"patch_size: expected an int in \[2, 16\]"),
    ("authors_resize long_side 0", lambda: authors_resize(_image(), 0), ValueError, "long_side: expected an int >= 1"),
]


@pytest.mark.parametrize("name,call,error,match", BUILD_CASES, ids=[case[0] for case in BUILD_CASES])
def test_building_a_database_checks_its_arguments_before_reading_images(name, call, error, match):
    """One (H, W, C) image passed as ``images`` was once quilted row by row into a database of
    (W, C) slivers; a long side of 0 made every image one pixel; a 17-pixel patch failed only
    at the first quilt()."""
    with pytest.raises(error, match=match):
        call()


def test_a_stack_of_images_is_still_a_sequence_of_images():
    stack = np.stack([_image(0), _image(1)])
    from_stack = build_patch_database(stack, 20, seed=2, long_side=None)
    from_list = build_patch_database(list(stack), 20, seed=2, long_side=None)
    assert np.array_equal(from_stack.patches, from_list.patches)


# ------------------------------------------------------------------------ case 5: the checksum


@pytest.mark.parametrize("edit", [
    lambda meta: meta.pop("sha256"),
    lambda meta: meta.__setitem__("sha256", None),
    lambda meta: meta.__setitem__("sha256", "abc"),
])
def test_a_sidecar_without_a_valid_checksum_is_refused(saved, edit):
    path, _ = saved
    meta = json.loads(path.with_suffix(".json").read_text())
    edit(meta)
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(PatchDatabaseError, match="sha256"):
        load_patch_database(path)


def test_replacing_the_file_after_loading_does_not_change_the_loaded_database(saved):
    path, database = saved
    loaded = load_patch_database(path)
    x = torch.rand(1, 3, 11, 11, generator=torch.Generator().manual_seed(0))
    before = quilt(x, loaded, seed=3)
    with open(path, "r+b") as handle:  # rewritten in place: a memory map would see this
        raw = bytearray(handle.read())
        start = _header_length(bytes(raw))
        raw[start:] = np.zeros(len(raw) - start, np.uint8).tobytes()
        handle.seek(0)
        handle.write(bytes(raw))
    assert np.array_equal(loaded.patches, database.patches)
    assert torch.equal(quilt(x, loaded, seed=3), before)
    with pytest.raises(ValueError):  # nor can a caller write into the verified bytes
        loaded.patches[0, 0, 0, 0] = 1.0
    with pytest.raises(PatchDatabaseError, match="checksum"):
        load_patch_database(path)  # and the rewritten file fails on the next load


# ------------------------------------------------------------------------ case 6: no SIGBUS


def test_truncating_a_loaded_database_does_not_crash_quilt(saved):
    path, _ = saved
    script = textwrap.dedent(f"""
        import os, torch
        from obfgrad.ops.quilt_op import quilt
        from obfgrad.data.patch_db import load_patch_database
        db = load_patch_database({str(path)!r})
        os.truncate({str(path)!r}, 128)
        y = quilt(torch.rand(1, 3, 11, 11), db, seed=0)
        print("ok", tuple(y.shape))
    """)
    # The child imports the obfgrad this test imported (the installed one under CI, else the checkout).
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(obfgrad.__file__)))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=package_parent)
    assert done.returncode == 0, f"exit {done.returncode} (SIGBUS is -7): {done.stderr[-2000:]}"
    assert "ok (1, 3, 11, 11)" in done.stdout
    with pytest.raises(PatchDatabaseError, match="db.npy"):
        load_patch_database(path)


# ------------------------------------------------------------------------ fault injection


def _truncated(path, meta):
    path.write_bytes(path.read_bytes()[:-1000])


def _truncated_to_header(path, meta):
    os.truncate(path, 128)


def _bit_flipped(path, meta):
    raw = bytearray(path.read_bytes())
    raw[-7] ^= 0x40
    path.write_bytes(bytes(raw))


def _header_bit_flipped(path, meta):
    raw = bytearray(path.read_bytes())
    raw[3] ^= 0x01  # inside the .npy magic string
    path.write_bytes(bytes(raw))


def _wrong_type(path, meta):
    np.save(path, np.zeros((meta["count"], 3, 5, 5), np.float64))


def _object_array(path, meta):
    np.save(path, np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)


def _wrong_shape(path, meta):
    np.save(path, np.zeros((meta["count"] - 1, 3, 5, 5), np.float32))


def _edited_value(path, meta):
    patches = np.load(path)
    patches[5, 1, 2, 3] = 0.5 if patches[5, 1, 2, 3] != 0.5 else 0.25
    np.save(path, patches)


def _not_npy(path, meta):
    path.write_text("this is not a numpy file")


def _sidecar_edited_count(path, meta):
    path.with_suffix(".json").write_text(json.dumps({**meta, "count": meta["count"] + 1}))


def _sidecar_garbage(path, meta):
    path.with_suffix(".json").write_bytes(b"\xff\xfe{not json")


def _sidecar_list(path, meta):
    path.with_suffix(".json").write_text("[1, 2, 3]")


def _sidecar_missing(path, meta):
    path.with_suffix(".json").unlink()


def _sidecar_count_string(path, meta):
    path.with_suffix(".json").write_text(json.dumps({**meta, "count": "600"}))


@pytest.mark.parametrize("damage,match", [
    (_truncated, "not a readable .npy"),
    (_truncated_to_header, "not a readable .npy"),
    (_bit_flipped, "fails its checksum"),
    (_header_bit_flipped, "not a readable .npy"),
    (_wrong_type, "holds float64"),
    (_object_array, "not a readable .npy"),
    (_wrong_shape, r"holds float32 \(599, 3, 5, 5\)"),
    (_edited_value, "fails its checksum"),
    (_not_npy, "not a readable .npy"),
    (_sidecar_edited_count, r"holds float32 \(600, 3, 5, 5\)"),
    (_sidecar_garbage, "not valid JSON"),
    (_sidecar_list, "format version"),
    (_sidecar_missing, "no sidecar"),
    (_sidecar_count_string, "no valid 'count'"),
], ids=lambda value: getattr(value, "__name__", None))
def test_every_damaged_database_file_is_refused_naming_it(saved, damage, match):
    path, database = saved
    damage(path, dict(database.meta))
    with pytest.raises(PatchDatabaseError, match=match) as info:
        load_patch_database(path)
    assert str(path.name) in str(info.value) or str(path.with_suffix(".json").name) in str(info.value)


def test_an_undamaged_file_loads_after_a_damaged_copy_was_refused(saved, tmp_path):
    path, database = saved
    copy = tmp_path / "copy.npy"
    copy.write_bytes(path.read_bytes())
    copy.with_suffix(".json").write_text(path.with_suffix(".json").read_text())
    _bit_flipped(copy, database.meta)
    with pytest.raises(PatchDatabaseError):
        load_patch_database(copy)
    assert np.array_equal(load_patch_database(path).patches, database.patches)

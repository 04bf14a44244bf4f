"""Cache directory resolution, recipe keys, and checkpoint save/load checks."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from obfgrad import fingerprint
from obfgrad.cache import (
    TRAINING_ROOTS,
    CheckpointError,
    cache_dir,
    cached_path,
    load_checkpoint,
    load_or_train,
    recipe_key,
    save_checkpoint,
    tensors_sha256,
    training_code,
)
from obfgrad.fingerprint import module_closure


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("OBFGRAD_CACHE", str(tmp_path / "explicit"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("OBFGRAD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "obfgrad"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "obfgrad"


def test_recipe_key_is_sha256_of_canonical_json():
    recipe = {"lr": 0.1, "arch": "small_cnn", "nested": {"b": [1, 2], "a": None}}
    canonical = '{"arch":"small_cnn","lr":0.1,"nested":{"a":null,"b":[1,2]}}'
    assert recipe_key(recipe) == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert recipe_key({"nested": {"a": None, "b": (1, 2)}, "arch": "small_cnn", "lr": 0.1}) == recipe_key(recipe)
    assert recipe_key({**recipe, "lr": 0.01}) != recipe_key(recipe)


def test_recipe_must_be_plain_json():
    with pytest.raises(ValueError, match="plain JSON"):
        recipe_key({"x": object()})
    with pytest.raises(ValueError):
        recipe_key({"x": float("nan")})
    with pytest.raises(TypeError):
        recipe_key([1, 2])


def test_cached_path_layout(monkeypatch, tmp_path):
    monkeypatch.setenv("OBFGRAD_CACHE", str(tmp_path))
    assert cached_path("models", {"a": 1}, ".pt") == tmp_path / "models" / f"{recipe_key({'a': 1})}.pt"
    for bad_kind in ("", "../x", "a/b"):
        with pytest.raises(ValueError, match="kind"):
            cached_path(bad_kind, {}, ".pt")


def test_checkpoint_round_trip_and_recipe_check(tmp_path):
    state = {"w": torch.randn(3, 2), "b": torch.zeros(2)}
    recipe = {"arch": "x", "sizes": (1, 2)}
    path = save_checkpoint(tmp_path / "c.pt", recipe, state, meta={"seconds": 1.5})
    payload = load_checkpoint(path, {"arch": "x", "sizes": [1, 2]})
    assert payload["meta"] == {"seconds": 1.5}
    for name in state:
        assert torch.equal(payload["state_dict"][name], state[name])
    with pytest.raises(CheckpointError, match="another recipe"):
        load_checkpoint(path, {"arch": "y", "sizes": [1, 2]})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary files left


def test_corrupt_or_foreign_checkpoints_are_refused(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"a": 1}, {"w": torch.ones(100)})
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path, {"a": 1})
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(path, {"a": 1})
    path.write_text(json.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path, {"a": 1})
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.pt", {"a": 1})


# -- fault injection: every damaged checkpoint is refused, and load_or_train retrains with a warning


def _tiny_build():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


def _tiny_train(model):
    with torch.no_grad():
        model.weight.copy_(torch.arange(12.0).view(3, 4) / 7)
        model.bias.fill_(0.25)
    return {"trained": True}


def _payload(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _flip_a_byte_of(path, tensor):
    """Flip one bit inside the stored bytes of ``tensor`` (torch's zip format stores them raw)."""
    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    at = bytes(data).find(raw)
    assert at >= 0, "the tensor's bytes are stored uncompressed"
    data[at + 5] ^= 0x01
    path.write_bytes(bytes(data))


def _corrupt(kind, path):
    payload = _payload(path)
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "bit_flip":
        _flip_a_byte_of(path, payload["state_dict"]["weight"])
    elif kind == "wrong_type":
        torch.save([payload["state_dict"]["weight"]], path)
    elif kind == "wrong_value_type":
        torch.save({**payload, "state_dict": {"weight": "not a tensor"}}, path)
    elif kind == "edited_value":  # an edited weight, the stored checksum left as it was
        state = dict(payload["state_dict"])
        state["weight"] = state["weight"].clone()
        state["weight"][0, 0] = 98.7
        torch.save({**payload, "state_dict": state}, path)
    elif kind == "nan_weight":  # non-finite weights with a checksum that matches them
        state = dict(payload["state_dict"])
        state["bias"] = torch.full_like(state["bias"], float("nan"))
        torch.save({**payload, "state_dict": state, "sha256": tensors_sha256(state)}, path)
    elif kind == "other_code":
        torch.save({**payload, "code": {**payload["code"], "modules": "0" * 64}}, path)
    else:
        raise AssertionError(kind)


FAULTS = ["truncated", "bit_flip", "wrong_type", "wrong_value_type", "edited_value", "nan_weight", "other_code"]
MESSAGES = {"truncated": "unreadable", "bit_flip": "SHA-256", "wrong_type": "format",
            "wrong_value_type": "no tensor state_dict", "edited_value": "SHA-256", "nan_weight": "non-finite",
            "other_code": "other training code"}


@pytest.mark.parametrize("kind", FAULTS)
def test_a_damaged_checkpoint_is_refused_by_load_checkpoint(tmp_path, kind):
    path = save_checkpoint(tmp_path / "c.pt", {"a": 1}, _trained_state())
    load_checkpoint(path, {"a": 1})  # intact: accepted
    _corrupt(kind, path)
    with pytest.raises(CheckpointError, match=MESSAGES[kind]):
        load_checkpoint(path, {"a": 1})


def _trained_state():
    model = _tiny_build()
    _tiny_train(model)
    return model.state_dict()


@pytest.mark.parametrize("kind", FAULTS + ["wrong_shape"])
def test_load_or_train_retrains_a_damaged_checkpoint_with_a_warning(monkeypatch, tmp_path, kind):
    monkeypatch.setenv("OBFGRAD_CACHE", str(tmp_path))
    recipe = {"arch": "linear", "seed": 0}
    calls = []

    def train(model):
        calls.append(1)
        return _tiny_train(model)

    first = load_or_train(recipe, _tiny_build, train)
    path = cached_path("models", recipe, ".pt")
    if kind == "wrong_shape":  # a consistent checkpoint of a differently shaped tensor
        state = {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}
        save_checkpoint(path, recipe, state)
    else:
        _corrupt(kind, path)
    with pytest.warns(RuntimeWarning, match="retraining"):
        again = load_or_train(recipe, _tiny_build, train)
    assert len(calls) == 2
    assert torch.equal(again.weight, first.weight) and torch.equal(again.bias, first.bias)
    load_checkpoint(path, recipe)  # the retrained checkpoint replaced the damaged one


def test_a_checkpoint_records_the_training_code_and_a_changed_module_invalidates_it(monkeypatch, tmp_path):
    monkeypatch.setenv("OBFGRAD_CACHE", str(tmp_path))
    recipe = {"arch": "linear", "seed": 0}
    load_or_train(recipe, _tiny_build, _tiny_train)
    payload = _payload(cached_path("models", recipe, ".pt"))
    assert payload["code"] == training_code()
    # The PGD adversary of adversarial training and the data loaders are training code ...
    closure = module_closure(TRAINING_ROOTS)
    for module in ("obfgrad.attacks.pgd", "obfgrad.data.idx", "obfgrad.models.training", "obfgrad.ops.thermometer_op",
                   "obfgrad.defenses.cascade", "obfgrad.models.wgan", "obfgrad.models.pixelcnn"):
        assert module in closure
    # ... the evaluation code is not (editing it keeps the models).
    assert "obfgrad.eval.diagnose" not in closure and "obfgrad.cli" not in closure
    real = fingerprint.file_sha256
    pgd = fingerprint.module_path("obfgrad.attacks.pgd")
    monkeypatch.setattr(fingerprint, "file_sha256",
                        lambda path: "edited" if Path(path) == pgd else real(path))
    calls = []
    with pytest.warns(RuntimeWarning, match="other training code"):
        load_or_train(recipe, _tiny_build, lambda model: calls.append(1) or _tiny_train(model))
    assert calls == [1]


def test_caller_files_are_part_of_the_training_code(tmp_path):
    glue = tmp_path / "glue.py"
    glue.write_text("ADVERSARY_STEPS = 10\n")
    before = training_code([glue])
    glue.write_text("ADVERSARY_STEPS = 7\n")
    assert training_code([glue])["files"] != before["files"]
    assert training_code([glue])["modules"] == before["modules"]


def test_non_finite_weights_are_never_cached(tmp_path):
    with pytest.raises(ValueError, match="non-finite"):
        save_checkpoint(tmp_path / "c.pt", {"a": 1}, {"w": torch.tensor([1.0, float("inf")])})
    assert not (tmp_path / "c.pt").exists()

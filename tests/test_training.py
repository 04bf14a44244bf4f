"""Training from recipes on synthetic data made here: it learns, it is bit-reproducible, the
cache returns the same weights without retraining, bad checkpoints are refused and retrained,
and adversarial training routes every batch through the adversary."""

import shutil
import warnings

import pytest
import torch
from torch import nn

from obfgrad.cache import cached_path
from obfgrad.models.training import (
    accuracy,
    build_seeded,
    make_recipe,
    train,
    train_or_load,
    validate_recipe,
)


def synthetic_data(count=512, seed=0):
    """10 classes on 1×8×8 images: class k lights up pixel row k % 8 (k < 8) or a column."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (count,), generator=generator)
    images = 0.2 * torch.rand(count, 1, 8, 8, generator=generator)
    for index, label in enumerate(labels.tolist()):
        if label < 8:
            images[index, 0, label, :] += 0.8
        else:
            images[index, 0, :, label - 8] += 0.8
    return images, labels


def tiny_recipe(**overrides):
    fields = dict(arch="small_cnn", arch_kwargs={"width": 8, "hidden": 32, "image_size": 8}, dataset="synthetic",
                  epochs=4, batch_size=32, lr=0.01, seed=3)
    fields.update(overrides)
    return make_recipe(**fields)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OBFGRAD_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    return synthetic_data()


def weights_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_recipe_learns(data):
    images, labels = data
    recipe = tiny_recipe()
    model = build_seeded(recipe)
    before = accuracy(model, images, labels)
    train(model, images, labels, recipe, progress=False)
    test_images, test_labels = synthetic_data(256, seed=1)
    assert before < 0.3
    assert accuracy(model, test_images, test_labels) > 0.9
    assert not model.training


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_same_recipe_gives_bit_identical_weights(data, optimizer):
    images, labels = data
    recipe = tiny_recipe(optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.01, weight_decay=1e-4,
                         lr_milestones=[2], arch_kwargs={"width": 8, "hidden": 32, "image_size": 8, "batch_norm": True})
    first = train(build_seeded(recipe), images, labels, recipe, progress=False)
    second = train(build_seeded(recipe), images, labels, recipe, progress=False)
    assert weights_equal(first, second)
    other = train(build_seeded({**recipe, "seed": 4}), images, labels, {**recipe, "seed": 4}, progress=False)
    assert not weights_equal(first, other)


def test_training_leaves_the_callers_rng_alone(data):
    images, labels = data
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(build_seeded(tiny_recipe(epochs=1)), images, labels, tiny_recipe(epochs=1), progress=False)
    torch.testing.assert_close(torch.rand(3), expected)


def test_train_limit_uses_only_the_first_examples(data):
    images, labels = data
    recipe = tiny_recipe(train_limit=64, epochs=1)
    poisoned = images.clone()
    poisoned[64:] = float("nan")  # would poison the weights if touched
    model = train(build_seeded(recipe), poisoned, labels, recipe, progress=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_cache_hit_returns_identical_weights_without_training(data):
    recipe = tiny_recipe()
    calls = []

    def data_fn(r):
        calls.append(r)
        return data

    first = train_or_load(recipe, data_fn=data_fn, progress=False)
    assert len(calls) == 1 and cached_path("models", recipe, ".pt").is_file()
    second = train_or_load(recipe, data_fn=data_fn, progress=False)
    assert len(calls) == 1  # loaded, not retrained
    assert weights_equal(first, second) and not second.training
    train_or_load(tiny_recipe(seed=9), data_fn=data_fn, progress=False)
    assert len(calls) == 2  # another recipe, another key


def test_corrupted_checkpoint_is_retrained_to_the_same_weights(data):
    recipe = tiny_recipe()
    first = train_or_load(recipe, data_fn=lambda r: data, progress=False)
    path = cached_path("models", recipe, ".pt")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match="unreadable"):
        again = train_or_load(recipe, data_fn=lambda r: data, progress=False)
    assert weights_equal(first, again)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_or_load(recipe, data_fn=lambda r: pytest.fail("should be cached"), progress=False)


def test_checkpoint_of_another_recipe_is_refused(data):
    recipe_a, recipe_b = tiny_recipe(seed=1), tiny_recipe(seed=2)
    model_a = train_or_load(recipe_a, data_fn=lambda r: data, progress=False)
    shutil.copy(cached_path("models", recipe_a, ".pt"), cached_path("models", recipe_b, ".pt"))
    with pytest.warns(RuntimeWarning, match="another recipe"):
        model_b = train_or_load(recipe_b, data_fn=lambda r: data, progress=False)
    assert not weights_equal(model_a, model_b)
    assert weights_equal(model_b, train(build_seeded(recipe_b), *data, recipe_b, progress=False))


def test_checkpoint_that_does_not_fit_the_model_is_retrained(data):
    recipe = tiny_recipe()
    train_or_load(recipe, data_fn=lambda r: data, progress=False)

    def wider(r):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    with pytest.warns(RuntimeWarning, match="refused"):
        model = train_or_load(recipe, build_fn=wider, data_fn=lambda r: data, progress=False)
    assert isinstance(model, nn.Sequential)


def test_adversarial_training_routes_every_batch_through_the_adversary(data):
    images, labels = data
    spec = {"eps": 0.1, "steps": 2, "step_size": 0.05, "distance": "linf"}
    recipe = tiny_recipe(adversarial=spec, epochs=2)
    seen = []

    def make_adversary(adversarial):
        assert adversarial == spec

        def adversary(model, x, y):
            seen.append((model.training, x.shape[0]))
            return torch.zeros_like(x)  # destroys every input: nothing can be learned

        return adversary

    model = train_or_load(recipe, data_fn=lambda r: data, adversary_fn=make_adversary, progress=False)
    batches = 2 * ((len(labels) + 31) // 32)
    assert len(seen) == batches and all(training is False for training, _ in seen)
    assert sum(n for _, n in seen) == 2 * len(labels)
    assert accuracy(model, images, labels) < 0.3  # trained on blanks only
    assert cached_path("models", recipe, ".pt") != cached_path("models", tiny_recipe(epochs=2), ".pt")


def test_adversarial_recipe_needs_an_adversary_and_vice_versa(data):
    images, labels = data
    spec = {"eps": 0.1, "steps": 2, "step_size": 0.05, "distance": "linf"}
    with pytest.raises(ValueError, match="adversary_fn"):
        train_or_load(tiny_recipe(adversarial=spec), data_fn=lambda r: data, progress=False)
    with pytest.raises(ValueError, match="adversary"):
        train(build_seeded(tiny_recipe()), images, labels, tiny_recipe(), adversary=lambda m, x, y: x, progress=False)


def test_regularization_loss_of_the_model_is_minimised(data):
    images, labels = data

    class Penalised(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(64, 10)

        def forward(self, x):
            return self.linear(x.flatten(1))

        def regularization_loss(self):
            return 100.0 * self.linear.weight.pow(2).sum()

    recipe = tiny_recipe(epochs=2)
    plain = train(build_seeded(recipe, lambda r: nn.Sequential(nn.Flatten(), nn.Linear(64, 10))), images, labels,
                  recipe, progress=False)
    penalised = train(build_seeded(recipe, lambda r: Penalised()), images, labels, recipe, progress=False)
    assert penalised.linear.weight.abs().max() < 0.2 * plain[1].weight.abs().max()


def test_accuracy_counts_argmax_matches():
    class Fixed(nn.Module):
        def forward(self, x):
            return nn.functional.one_hot(x.flatten(1)[:, 0].long(), 10).float()

    images = torch.tensor([0, 3, 3, 9, 1], dtype=torch.float32).view(5, 1, 1, 1)
    assert accuracy(Fixed(), images, torch.tensor([0, 3, 2, 9, 2]), batch_size=2) == pytest.approx(3 / 5)


def test_recipe_validation():
    with pytest.raises(ValueError, match="unknown fields"):
        validate_recipe({**make_recipe(), "epoch": 2})
    with pytest.raises(ValueError, match="missing fields"):
        validate_recipe({"arch": "small_cnn"})
    with pytest.raises(ValueError, match="optimizer"):
        make_recipe(optimizer="rmsprop")
    with pytest.raises(ValueError, match="adversarial"):
        make_recipe(adversarial={"eps": 0.1})
    with pytest.raises(ValueError, match="train_limit"):
        make_recipe(train_limit=0)
    assert make_recipe(lr_milestones=(1, 2))["lr_milestones"] == [1, 2]


def test_seeded_epoch_loop_covers_each_epoch_once_repeats_per_seed_and_spares_the_callers_stream():
    from obfgrad.models.loop import batches_per_epoch, epoch_batches, seeded_training

    def run(seed):
        with seeded_training(seed, total=6, desc="t", progress=False) as (data_rng, _):
            batches = list(epoch_batches(10, 4, 2, data_rng))
            noise = torch.rand(2)  # what dropout would draw: from seed + 1
        return batches, noise

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    batches, noise = run(7)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's stream is untouched
    assert [(e, k) for e, k, _ in batches] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert batches_per_epoch(10, 4) == 3 and [len(i) for _, _, i in batches] == [4, 4, 2] * 2
    for epoch in (0, 1):
        assert sorted(torch.cat([i for e, _, i in batches if e == epoch]).tolist()) == list(range(10))
    again, noise_again = run(7)
    assert all(torch.equal(a[2], b[2]) for a, b in zip(batches, again)) and torch.equal(noise, noise_again)
    other, _ = run(8)
    assert not all(torch.equal(a[2], b[2]) for a, b in zip(batches, other))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(8)
        assert torch.equal(noise, torch.rand(2))  # the loop's global draws come from seed + 1

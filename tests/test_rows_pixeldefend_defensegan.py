"""Dry runs of rows 6 (PixelDefend) and 7 (Defense-GAN) in the paper profile: 2 examples, 2 steps,
untrained models at paper size, synthetic data, on CPU."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # reproduce/ is a top-level directory of the repo, not installed
    sys.path.append(str(ROOT))

import torch  # noqa: E402

from obfgrad.defenses.pixeldefend import PixelDefend  # noqa: E402
from obfgrad.models.pixelcnn import PixelCNN  # noqa: E402
from reproduce import runner  # noqa: E402
from reproduce.rows import all_specs  # noqa: E402
from reproduce.spec import RunContext  # noqa: E402


def test_paper_profile_dry_run_of_pixeldefend_and_defensegan(tmp_path, monkeypatch):
    monkeypatch.setenv("OBFGRAD_CACHE", str(tmp_path / "cache"))
    specs = all_specs(["pixeldefend", "defensegan"], "paper", dry_run=True)
    pixeldefend, defensegan = specs
    assert pixeldefend.config["pixelcnn"]["arch_kwargs"]["nr_filters"] == 160
    assert pixeldefend.config["pixelcnn"]["arch_kwargs"]["nr_resnet"] == 5
    assert pixeldefend.config["max_positions"] == 4  # the dry run purifies only the first pixels
    assert defensegan.config["generator"]["dim"] == 64 and defensegan.config["generator"]["arch"] == "dcgan"
    ctx = RunContext(results_dir=tmp_path / "results", dry_run=True, progress=False, log=lambda message: None)
    outcome = runner.run_table(specs, ctx)
    rows = json.loads(outcome["paths"]["json"].read_text())["rows"]
    for name in ("pixeldefend", "defensegan"):
        row = rows[name]
        assert row["n"] == 2 if "n" in row else True
        for field in ("clean_accuracy", "own_attack_accuracy", "adaptive_accuracy"):
            assert 0.0 <= row[field] <= 1.0
    assert 0.0 <= rows["defensegan"]["perfect_projection_accuracy"] <= 1.0


def test_smoke_specs_have_the_issue_sizes():
    pixeldefend, defensegan = all_specs(["pixeldefend", "defensegan"], "smoke")
    assert pixeldefend.n_examples >= 50 and defensegan.n_examples >= 100
    assert defensegan.distance == "l2_per_value" and defensegan.eps == 0.005


def test_smoke_pixeldefend_uses_song_et_al_fashion_mnist_pair():
    """Song et al.'s Fashion-MNIST setting, in their 0..255 units: attack at 25, purify within 32;
    the paper profile keeps the CIFAR-10 pair 8 and 16 of the authors' code."""
    (smoke,) = all_specs(["pixeldefend"], "smoke")
    assert smoke.dataset == "fashion-mnist"
    assert smoke.config["eps_255"] == {"attack": 25, "defend": 32}
    assert round(smoke.eps * 255, 9) == 25 and round(smoke.config["eps_defend"] * 255, 9) == 32
    assert smoke.claimed_accuracy == 0.84  # their abstract's Fashion-MNIST number, the verdict's claim
    assert smoke.config["pixelcnn"]["arch_kwargs"]["nr_filters"] == 40  # 160 // 4, their f_mnist width
    assert smoke.config["pixelcnn"]["arch_kwargs"]["nr_logistic_mix"] == 10
    (paper,) = all_specs(["pixeldefend"], "paper")
    assert paper.config["eps_255"] == {"attack": 8, "defend": 16}
    assert round(paper.eps * 255, 9) == 8 and round(paper.config["eps_defend"] * 255, 9) == 16
    assert paper.claimed_accuracy is None


def _density_wanting_black() -> PixelCNN:
    """A PixelCNN whose every pixel's distribution is a sharp logistic at intensity 0."""
    model = PixelCNN(in_channels=1, nr_filters=4, nr_resnet=1, nr_stages=1, nr_logistic_mix=2).eval()
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.copy_(torch.tensor([0.0, 0.0, -1.0, -1.0, -7.0, -7.0]))  # logits, means, log-scales
    return model


def test_smoke_pixeldefend_purifier_moves_each_value_by_its_radius_in_0_255_levels():
    """The smoke purifier, built from the row's own eps_defend, pulls a white image toward black by
    exactly 32 levels (255 -> 223) and a mid-grey value all the way down when within 32 of black."""
    (smoke,) = all_specs(["pixeldefend"], "smoke")
    purifier = PixelDefend(_density_wanting_black(), smoke.config["eps_defend"], memo=False)
    x = torch.full((2, 1, 4, 4), 255.0)
    x[1] = 20.0
    levels = (purifier(x / 255) * 255).round()
    assert torch.equal(levels[0], torch.full((1, 4, 4), 255.0 - smoke.config["eps_255"]["defend"]))
    assert torch.equal(levels[1], torch.zeros(1, 4, 4))


def test_pixeldefend_erased_fractions_count_only_attacked_values():
    """identity_gap's erased fractions: of the values the attack changed, those purification puts
    where it puts the clean image's, split into black clean values and the others."""
    from reproduce.rows.pixeldefend import _undone

    def image(*levels):
        return torch.tensor(levels, dtype=torch.float32).view(1, 1, 2, 2) / 255

    x, x_adv = image(0, 0, 100, 100), image(5, 0, 110, 104)  # three values attacked, one black
    purified, purified_adv = image(0, 0, 100, 100), image(0, 3, 108, 100)  # an unattacked change is not counted
    gap = _undone(x, x_adv, purified, purified_adv)
    assert gap["attacked_values"] == 3
    assert gap["attacked_black_values"] == 1 and gap["erased_fraction_black"] == 1.0
    assert gap["attacked_other_values"] == 2 and gap["erased_fraction_other"] == 0.5
    assert _undone(x, x, purified, purified)["erased_fraction_black"] is None  # nothing attacked

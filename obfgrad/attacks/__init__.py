"""Attacks: PGD, Carlini-Wagner l2, LS-PGA, the latent-space (reparameterization) attack, Guo et
al.'s penalized gradient descent, transfer from a surrogate, and the BPDA / EOT wrappers that make
them adaptive."""

from obfgrad.attacks.cw import CarliniWagnerL2
from obfgrad.attacks.eot import EOT
from obfgrad.attacks.latent import LatentAttack, invert
from obfgrad.attacks.losses import loss_and_grad, make_objective
from obfgrad.attacks.lspga import LSPGA
from obfgrad.attacks.penalized import PenalizedGradientDescent
from obfgrad.attacks.pgd import PGD
from obfgrad.attacks.result import AttackResult
from obfgrad.attacks.transfer import TransferAttack
from obfgrad.ops.bpda import BPDA  # an ops-level primitive (defenses use it too), re-exported here

__all__ = ["PGD", "CarliniWagnerL2", "BPDA", "EOT", "LSPGA", "LatentAttack", "invert",
           "PenalizedGradientDescent", "TransferAttack", "AttackResult", "loss_and_grad", "make_objective"]

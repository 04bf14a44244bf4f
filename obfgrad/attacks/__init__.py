"""Attacks: PGD, Carlini-Wagner l2, and the BPDA / EOT wrappers that make them adaptive."""

from obfgrad.attacks.bpda import BPDA
from obfgrad.attacks.cw import CarliniWagnerL2
from obfgrad.attacks.eot import EOT
from obfgrad.attacks.losses import loss_and_grad, make_objective
from obfgrad.attacks.penalized import PenalizedGradientDescent
from obfgrad.attacks.pgd import PGD
from obfgrad.attacks.result import AttackResult
from obfgrad.attacks.transfer import TransferAttack

__all__ = ["PGD", "CarliniWagnerL2", "BPDA", "EOT", "AttackResult", "PenalizedGradientDescent", "TransferAttack", "loss_and_grad", "make_objective"]

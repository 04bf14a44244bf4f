"""Thermometer encoding as a defense (Buckman, Roy, Raffel & Goodfellow, ICLR 2018).

The defended model is ``classifier(thermometer(x))``: each pixel is quantised into ``L = 16``
levels and fed to the network as its cumulative one-hot ("thermometer") code. The classifier is
trained on encoded inputs; Table 1 reports the model trained *without* adversarial training.

Three ways to differentiate the same deployed model (the forward pass is always the true,
discrete encoding):

* ``gradient="bpda"``: the soft-thermometer derivative of :func:`obfgrad.ops.thermometer_op`
  (Athalye et al.'s BPDA, Sec. 5.1), the adaptive attack's view (``backward`` picks the op's
  soft mode: ``"soft"``, or ``"soft_255"`` as the authors' attack graph evaluates it);
* ``gradient="true"``: the encoding's true derivative, zero almost everywhere (a shattered
  gradient): what a plain gradient attack on the defense sees;
* the classifier on codes, :attr:`ThermometerDefense.classifier`, which LS-PGA attacks in logit
  space (:class:`obfgrad.attacks.LSPGA`).
"""

from __future__ import annotations

import torch
from torch import nn

from obfgrad._checks import check_choice, check_int
from obfgrad.ops.thermometer_op import BACKWARD_MODES, thermometer

__all__ = ["Thermometer", "ThermometerDefense", "GRADIENTS", "SOFT_BACKWARDS"]

GRADIENTS = ("bpda", "true")
#: The op's soft BPDA backwards (obfgrad.ops.thermometer_op.BACKWARD_MODES without straight-through).
SOFT_BACKWARDS = ("soft", "soft_255")


class Thermometer(nn.Module):
    """The encoding layer, the ``nn.Module`` of :func:`obfgrad.ops.thermometer_op.thermometer`:
    ``(N, C, H, W) -> (N, C*levels, H, W)`` with the op's BPDA ``backward`` (the training layout
    is ``nn.Sequential(Thermometer(levels), classifier)``; :meth:`ThermometerDefense.from_sequential`
    turns it into the defense).

    Example:
        >>> import torch
        >>> Thermometer(levels=4)(torch.tensor([[[[0.0, 0.6]]]])).flatten().tolist()
        [1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    """

    def __init__(self, levels: int = 16, backward: str = "soft"):
        super().__init__()
        self.levels = check_int(levels, "levels", low=2)
        self.backward_mode = check_choice(backward, "backward", BACKWARD_MODES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return thermometer(x, self.levels, backward=self.backward_mode)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, backward={self.backward_mode!r}"


class ThermometerDefense(nn.Module):
    """``classifier(thermometer(x, levels))`` with a choice of input gradient.

    Args:
        classifier: network on codes ``(N, C*L, H, W) -> logits``.
        levels: quantisation levels L (16 in Buckman et al. and Table 1).
        gradient: ``"bpda"`` (soft thermometer) or ``"true"`` (zero almost everywhere).
        backward: the BPDA backward of :func:`obfgrad.ops.thermometer_op.thermometer` used with
            ``gradient="bpda"``: ``"soft"`` (default) or ``"soft_255"`` (Athalye et al.'s
            float32 evaluation on the 0-255 scale; the paper profile's).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 4, 3))
        >>> defense = ThermometerDefense(net, levels=16)
        >>> defense(torch.rand(2, 1, 2, 2)).shape
        torch.Size([2, 3])
    """

    def __init__(self, classifier: nn.Module, levels: int = 16, gradient: str = "bpda", backward: str = "soft"):
        super().__init__()
        if not callable(classifier):  # else the first call fails with "'int' object is not callable"
            raise TypeError(f"classifier: expected a model (codes -> logits), got {type(classifier).__name__}")
        self.classifier = classifier
        self.levels = check_int(levels, "levels", low=2)
        self.gradient = check_choice(gradient, "gradient", GRADIENTS)
        self.backward_mode = check_choice(backward, "backward", SOFT_BACKWARDS)

    @classmethod
    def from_sequential(cls, model: nn.Sequential, gradient: str = "bpda",
                        backward: str = "soft") -> ThermometerDefense:
        """Wrap a trained ``nn.Sequential(Thermometer(L), classifier)`` (the training layout)."""
        if not (isinstance(model, nn.Sequential) and len(model) == 2 and isinstance(model[0], Thermometer)):
            raise TypeError("model: expected nn.Sequential(Thermometer(L), classifier)")
        return cls(model[1], model[0].levels, gradient, backward)

    def with_gradient(self, gradient: str) -> ThermometerDefense:
        """The same model (shared weights) seen through another gradient."""
        return ThermometerDefense(self.classifier, self.levels, gradient, self.backward_mode)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.gradient == "true":
            # The encoding is piecewise constant: its true derivative is 0 wherever it exists.
            return thermometer(x.detach(), self.levels) + 0.0 * x.sum(dim=(1, 2, 3), keepdim=True)
        return thermometer(x, self.levels, backward=self.backward_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encode(x))

    def extra_repr(self) -> str:
        return f"levels={self.levels}, gradient={self.gradient!r}, backward={self.backward_mode!r}"

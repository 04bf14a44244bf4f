"""The defenses of Table 1, each an ``nn.Module`` (or a training method) with its paper's
hyperparameters as defaults."""

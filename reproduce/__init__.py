"""Regenerate Table 1 of Athalye, Carlini & Wagner (ICML 2018): ``python -m reproduce``."""

"""Registered evaluate: importing the package registers every module in it (see registry.py)."""

from medjax import _autoimport

_autoimport.import_all(__name__, __path__)

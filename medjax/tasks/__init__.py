"""Registered tasks: what a config's data, evaluation and outputs are (segmentation, LUNA16).

A task is the registry entry that separates the two workloads; the trainer never switches on
the task (STYLE.md sec. 13). Importing the package registers every module in it.
"""

from medjax import _autoimport

_autoimport.import_all(__name__, __path__)

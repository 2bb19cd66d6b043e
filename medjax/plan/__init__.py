"""Experiment planning (nnU-Net style): patch, batch and UNet topology from the data + device.

``topology``: pooling/kernels per axis and patch shrinking (pure); ``planner``: the plan for a
memory budget given a ``measure`` function (pure); ``measure``: the compiled train step's
memory; ``apply``: ``--mode=plan`` and ``plan.auto=True`` (records ``<workdir>/plan_arch.json``).
"""

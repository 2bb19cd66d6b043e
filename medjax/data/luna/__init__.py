"""LUNA16 host-side data: synthetic LUNA-format data, CSV tables, world <-> voxel geometry,
the cutout store, Grain-compatible sources with balanced sampling, and the FROC / CPM evaluation.

Modules are imported by name (``from medjax.data.luna import froc``); nothing here registers
into the registry, so importing this package has no side effects.
"""

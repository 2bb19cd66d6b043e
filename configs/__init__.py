"""Built-in experiment configs (``get_config(arg)`` each), shipped with medjax.

An installed medjax names them: ``medjax train --config=unet3d:tiny``.
"""

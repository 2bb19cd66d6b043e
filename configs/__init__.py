"""Built-in experiment configs (``get_config(arg)`` each), shipped with medjax: ``--config=unet3d``."""

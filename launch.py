"""medjax entry point: ``python launch.py --config=configs/unet.py [--workdir=runs/x]``.

A thin shim: the flags and the body live in ``medjax/cli.py``, which is also the installed
``medjax`` command (``medjax train --config=unet ...``); both take the same flags.
"""

from medjax import cli

if __name__ == "__main__":
    cli.main()

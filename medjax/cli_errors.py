"""One line, not a traceback, for the faults a user fixes: a bad command line, disk full,
permissions, and orbax's own logs of a failed save (``medjax/cli.py`` uses these)."""

from __future__ import annotations

import errno
import logging as py_logging
import re
import sys
from collections.abc import Callable

from absl import logging

# OSErrors a user fixes (space, permissions, a path through a file): one line, not a traceback.
USER_ERRNOS = {
    errno.ENOSPC: "the disk is full: free space or choose another --workdir",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another --workdir",
    errno.EROFS: "the file system is read-only: choose a writable --workdir",
    errno.EACCES: "permission denied: choose a writable --workdir or fix its permissions",
    errno.EPERM: "permission denied: choose a writable --workdir or fix its permissions",
    errno.ENOTDIR: "a part of the path is a file, not a folder: fix the path",
}


def os_error_line(e: OSError, default_path: str) -> str | None:
    """The one line for an OSError the user fixes (naming its path), or None for a bug's."""
    if e.errno not in USER_ERRNOS:
        return None
    return f"{e.filename or default_path}: {USER_ERRNOS[e.errno]}."


def flags_parser(parse: Callable[[list[str]], list[str]]) -> Callable[[list[str]], list[str]]:
    """absl's flag parsing (``parse``, e.g. ``FLAGS``) with a bad ``--config`` or
    ``--config.a.b=v`` said in one line and exit status 2.

    ml_collections raises AttributeError/KeyError/TypeError/ValueError (and absl flags.Error)
    from deep inside the override machinery; the user only needs the flag and a hint.
    """

    def parser(argv: list[str]) -> list[str]:
        try:
            return parse(argv)
        except Exception as e:  # noqa: BLE001 - every parse failure is the user's command line
            print(f"medjax error: {flag_error(argv, e)}", file=sys.stderr)
            sys.exit(2)

    return parser


def flag_error(argv: list[str], e: Exception) -> str:
    """The line for a failed parse of ``argv``: a misspelt ``--config.`` key names the flag, the
    likely key and ``configs/common.py``; anything else its first line."""
    text = str(e).replace("\\n", "\n").replace("\\'", "'")
    first = text.splitlines()[0] if text.strip() else type(e).__name__
    overrides = [a[2:].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    missing = re.match(r"""^['"]*([A-Za-z_][\w]*)['"]*$""", first.strip())
    if missing:
        name = missing.group(1)
        key = next((k for k in overrides if name in k.split(".")[1:]), None)
        if key is not None:
            guess = re.search(r'Did you mean "([^"]+)"', text)
            hint = f" (did you mean {guess.group(1)!r}?)" if guess else ""
            return (
                f"--{key}: {key[len('config.') :]!r} is not a config key{hint}; every key and "
                f"its default is in configs/common.py."
            )
    return f"bad command line ({type(e).__name__}): {first.strip()}"


def quiet_orbax() -> None:
    """Drops orbax's own ERROR logs (with tracebacks) of a failed save: the failure reaches
    medjax as an exception and is said in one line. ``-v``/``--verbosity`` keeps them."""

    class _NoOrbax(py_logging.Filter):
        def filter(self, record: py_logging.LogRecord) -> bool:
            return "/orbax/" not in record.pathname

    logging.get_absl_logger().addFilter(_NoOrbax())

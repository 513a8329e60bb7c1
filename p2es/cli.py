"""The ``p2es`` command line.

Each package contributes its sub-commands through a ``register(subparsers)`` function, so this
file only wires them together and turns every failure into one clear line on stderr.
Set ``P2ES_DEBUG=1`` to see full tracebacks.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn, cast

from p2es import __version__
from p2es.errors import P2esError
from wearable import cli as wearable_cli

#: the packages' command modules after ``wearable.cli`` (``p2es data``), in ``p2es --help`` order:
#: the engine (``p2es demo`` ... ``p2es export``; it needs torch, the data commands do not), then
#: the downstream stages ``p2es alerts`` and ``p2es dashboards``; one that is not installed is left out
_OPTIONAL = ("engine.app.cli", "alerts.cli", "dashboards.cli")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (plus the usual exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="p2es", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"p2es {__version__}")
    # every command's parser is a _Parser; the packages' register() functions take any ArgumentParser
    sub = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser),
    )
    sub.required = True
    wearable_cli.register(sub)
    for name in _OPTIONAL:
        m = _installed(name)
        if m is not None:
            m.register(sub)
    return parser


def _installed(name: str) -> ModuleType | None:
    """The module ``name``; None when it, a package above it or torch is not installed."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing and (name == missing or name.startswith(missing + ".") or missing == "torch"):
            return None
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = os.environ.get("P2ES_DEBUG", "") not in ("", "0")
    try:
        rc = args.func(args)
    except P2esError as exc:
        if debug:
            raise
        print(f"p2es: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("p2es: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` & co.: stop quietly, as Unix tools do
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter flushes it at exit
        return 141
    except Exception as exc:  # noqa: BLE001 - no traceback reaches a user
        if debug:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"p2es: internal error: {type(exc).__name__}: {msg} (set P2ES_DEBUG=1 for details)",
            file=sys.stderr,
        )
        return 1
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Command-line flags that an environment variable can set: one helper for every CLI.

Containers and the Helm chart configure the services through the environment, a microscope PC
configures its client once; a flag on the command line wins. Each flag's variable is named in
its ``--help`` line, so nobody has to read the source to find it.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="demo")
>>> flags = EnvFlags(parser, "LOOPSTREAM_DEMO_", environ={"LOOPSTREAM_DEMO_PORT": "7"})
>>> flags.add("--port", type=int, default=50061, help="gRPC port")
>>> flags.add("--url", env="LOOPSTREAM_TRACKER_URL", default="127.0.0.1:50061")
>>> flags.add("--no-auth", action="store_true", help="serve without authentication")
>>> args = parser.parse_args([])
>>> args.port, args.url, args.no_auth
(7, '127.0.0.1:50061', False)
>>> parser.parse_args(["--port", "8"]).port
8
>>> "LOOPSTREAM_DEMO_NO_AUTH" in parser.format_help()
True
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


def env_name(prefix: str, flag: str) -> str:
    """The variable of ``flag`` under ``prefix``: ``--metrics-port`` -> ``PREFIX_METRICS_PORT``.

    >>> env_name("LOOPSTREAM_SERVE_", "--grpc-port")
    'LOOPSTREAM_SERVE_GRPC_PORT'
    """
    return prefix + flag.lstrip("-").upper().replace("-", "_")


def is_true(value: str) -> bool:
    """How a variable switches a boolean flag on (anything else leaves it off).

    >>> [is_true(v) for v in ("1", "Yes", " on ", "0", "")]
    [True, True, True, False, False]
    """
    return value.strip().lower() in TRUE_WORDS


class EnvFlags:
    """Adds a CLI's flags to ``parser``, each with its environment variable as the default.

    A string default (also one read from the environment) goes through the flag's ``type`` as
    argparse does for a typed default, so a bad value is a usage error naming the flag.
    """

    def __init__(
        self,
        parser: argparse.ArgumentParser,
        prefix: str,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self.parser = parser
        self.prefix = prefix
        self.environ = environ

    def add(self, flag: str, *, env: str | None = None, default: Any = None, **kwargs: Any) -> None:
        """``parser.add_argument(flag, ...)`` with the default from ``env`` (default: prefix + flag)."""
        name = env or env_name(self.prefix, flag)
        value = self.environ.get(name)
        if kwargs.get("action") == "store_true":
            default = bool(default) if value is None else is_true(value)
        elif value is not None:
            default = value
        help_text = kwargs.pop("help", None)
        kwargs["help"] = f"{help_text} [{name}]" if help_text else f"[{name}]"
        self.parser.add_argument(flag, default=default, **kwargs)

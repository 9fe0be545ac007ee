"""The one error form of every command: ``error: <what is wrong and how to fix it>``, exit 2.

A command's ``main`` adopts it with one decorator::

    @cli.command
    def main(argv: list[str] | None = None) -> int:
        args = parser.parse_args(argv)  # cli.add_debug_flag(parser) lists --debug in --help
        ...                              # raise ConfigError / CheckpointError / FileNotFoundError / ...

Expected failures (a bad config, checkpoint, file, URL, value; an S3 endpoint that cannot be
reached or refuses us; a package that only one of the pip extras installs) print ONE line on
stderr and exit 2. ``--debug`` anywhere on the command line (it is taken out before the command's
own parser sees it) or ``SSAGAN_DEBUG=1`` prints the traceback first. Anything else is a bug: Python's traceback, exit 1.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import sys
import traceback
from typing import Callable, Optional, Sequence

DEBUG_FLAG = "--debug"
DEBUG_ENV = "SSAGAN_DEBUG"
EXIT_BAD_INPUT = 2


def add_debug_flag(parser) -> None:
    """List ``--debug`` in an argparse parser's help (``command`` consumes the flag itself)."""
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help=f"on an error, print the traceback too (or set {DEBUG_ENV}=1)")


def debug_requested(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


class MissingExtra(Exception):
    """A command needs packages that only one of the project's pip extras installs."""


def missing_modules(*modules: str) -> list[str]:
    """Those of ``modules`` that cannot be imported here (found without importing them)."""
    missing = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # an import hook refused it
            found = False
        if not found:
            missing.append(module)
    return missing


def require_extra(what: str, extra: str, *modules: str) -> None:
    """Raise ``MissingExtra`` naming the extra when a module ``what`` needs is not installed."""
    missing = missing_modules(*modules)
    if missing:
        names = " and ".join(m.replace("_", "-") for m in missing)
        raise MissingExtra(f"{what} needs {names}, which the '{extra}' extra installs: "
                           f"pip install 'ssagan-dist[{extra}]'")


def _expected_types() -> tuple[type[BaseException], ...]:
    # ValueError covers ConfigError and CheckpointError (both subclass it); OSError covers
    # FileNotFoundError, FileExistsError, PermissionError and s3fs's translated S3 errors;
    # botocore comes with s3fs (aiobotocore).
    from botocore.exceptions import BotoCoreError, ClientError

    return ValueError, OSError, MissingExtra, BotoCoreError, ClientError


_URL_IN_TEXT = re.compile(r'endpoint URL: "?(?P<url>[a-z]+://[^"\s]+)')


def describe(error: BaseException) -> str:
    """The one line for an expected failure (without the ``error:`` prefix)."""
    text = str(error).strip() or type(error).__name__
    name = type(error).__name__
    if name == "EndpointConnectionError":
        url = _URL_IN_TEXT.search(text)
        where = _endpoint_and_bucket(url.group("url")) if url else "the S3 endpoint"
        return (f"cannot connect to {where}: nothing answers there; check run.s3_endpoint / --endpoint-url / "
                "AWS_ENDPOINT_URL and that the object store is up")
    if name == "NoCredentialsError":
        return ("no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) "
                "for the endpoint in run.s3_endpoint / --endpoint-url / AWS_ENDPOINT_URL")
    if name == "ClientError":
        code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
        return f"S3 refused the request ({code or 'error'}): {text}"
    if isinstance(error, KeyError):  # str() of a KeyError is only the quoted key
        return f"missing key {text}"
    return " ".join(text.split())  # one line, whatever the message held


def _endpoint_and_bucket(url: str) -> str:
    """'S3 endpoint http://host:port (bucket 'b')' from a path-style request URL."""
    match = re.match(r"(?P<endpoint>[a-z]+://[^/]+)/?(?P<bucket>[^/?]*)", url)
    if not match:
        return f"S3 endpoint {url}"
    bucket = f" (bucket {match.group('bucket')!r})" if match.group("bucket") else ""
    return f"S3 endpoint {match.group('endpoint')}{bucket}"


def report(error: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(error)
    print(f"error: {describe(error)}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def command(main: Callable[[Optional[list[str]]], int]) -> Callable[[Optional[list[str]]], int]:
    """Wrap a ``main(argv) -> exit code``: expected failures become one ``error:`` line and exit 2."""

    @functools.wraps(main)
    def wrapped(argv: Optional[list[str]] = None) -> int:
        args = list(sys.argv[1:] if argv is None else argv)
        debug = debug_requested(args)
        args = [a for a in args if a != DEBUG_FLAG]
        try:
            return main(args)
        except _expected_types() as e:
            return report(e, debug)

    return wrapped

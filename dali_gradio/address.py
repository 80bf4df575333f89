"""Where `python sd_gradio.py` listens: its command line, Gradio's own variables, a free port.

The host and port come, first found wins, from `--host`/`--port`, Dali's `DALI_GRADIO_HOST`/
`DALI_GRADIO_PORT`, then Gradio's `GRADIO_SERVER_NAME`/`GRADIO_SERVER_PORT` (the variables
Gradio's own error message recommends), else 127.0.0.1 and the first free port from 7860 on, as
Gradio itself does. A port the user asked for that is taken ends the program with a message
that says which port and how to pick another, not with a traceback from deep inside Gradio.
"""

from __future__ import annotations

import argparse
import errno
import socket
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_HOST, FIRST_PORT, PORTS_TRIED = "127.0.0.1", 7860, 100
HOST_VARIABLES = ("DALI_GRADIO_HOST", "GRADIO_SERVER_NAME")
PORT_VARIABLES = ("DALI_GRADIO_PORT", "GRADIO_SERVER_PORT")


class AddressError(SystemExit):
    """The UI cannot listen where it was asked to; the message says why and what to do."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int | None  # None: the first free port from FIRST_PORT on
    port_source: str  # what asked for the port: "--port", a variable's name, or "default"


def parse_address(args: argparse.Namespace, environ: Mapping[str, str]) -> Address:
    """The address asked for by `args.host`/`args.port` (None when not given) and `environ`."""
    host = args.host or next((environ[v] for v in HOST_VARIABLES if environ.get(v)), DEFAULT_HOST)
    if args.port is not None:
        return Address(host, checked_port(str(args.port), "--port"), "--port")
    for variable in PORT_VARIABLES:
        if environ.get(variable):
            return Address(host, checked_port(environ[variable], variable), variable)
    return Address(host, None, "default")


def checked_port(value: str, source: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise AddressError(f"{source}={value!r} is not a port: give a number from 1 to 65535.")
    return port


def is_free(host: str, port: int) -> bool:
    """Whether a server could listen on (host, port) now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise AddressError(f"Cannot listen on {host}:{port}: {exc.strerror}.") from None
    return True


def choose_port(address: Address, first: int = FIRST_PORT, tries: int = PORTS_TRIED) -> int:
    """The port to listen on: the one asked for if free (else `AddressError`), or the first
    free one of `first … first + tries - 1`."""
    if address.port is not None:
        if is_free(address.host, address.port):
            return address.port
        raise AddressError(
            f"Port {address.port} on {address.host} (from {address.port_source}) is already in "
            "use. Stop what runs there, or choose another port: "
            "`python sd_gradio.py --port 7861`, or GRADIO_SERVER_PORT=7861."
        )
    for port in range(first, first + tries):
        if is_free(address.host, port):
            return port
    raise AddressError(
        f"Ports {first}–{first + tries - 1} on {address.host} are all in use. Choose one with "
        "`python sd_gradio.py --port N` or GRADIO_SERVER_PORT=N."
    )


def add_address_arguments(parser: argparse.ArgumentParser) -> None:
    """`--host` and `--port`, with help that names the variables and the defaults."""
    parser.add_argument(
        "--host",
        default=None,
        help=f"address to listen on (default: ${' or $'.join(HOST_VARIABLES)}, else {DEFAULT_HOST})",
    )
    parser.add_argument(
        "--port",
        default=None,
        help=f"port to listen on (default: ${' or $'.join(PORT_VARIABLES)}, else the first free "
        f"port from {FIRST_PORT})",
    )

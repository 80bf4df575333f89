"""Where `python sd_gradio.py` listens: flags, Gradio's variables, a taken port said plainly.

(That the UI really listens on GRADIO_SERVER_PORT is shown by test_gradio_app.py, whose server
is started with that variable alone.)
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dali_gradio.address import (
    Address,
    AddressError,
    add_address_arguments,
    choose_port,
    parse_address,
)

ROOT = Path(__file__).resolve().parents[2]


def parsed(argv: list[str], environ: dict[str, str]) -> Address:
    parser = argparse.ArgumentParser()
    add_address_arguments(parser)
    return parse_address(parser.parse_args(argv), environ)


@contextmanager
def taken_port() -> Iterator[int]:
    """A loopback port something is listening on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield int(listener.getsockname()[1])


def test_gradio_variables_are_honoured_and_flags_win() -> None:
    assert parsed([], {"GRADIO_SERVER_PORT": "7999"}) == Address(
        "127.0.0.1", 7999, "GRADIO_SERVER_PORT"
    )
    assert parsed([], {"GRADIO_SERVER_NAME": "0.0.0.0"}).host == "0.0.0.0"
    both = {"GRADIO_SERVER_PORT": "7999", "DALI_GRADIO_PORT": "7001"}
    assert parsed([], both).port == 7001
    assert parsed(["--port", "7002", "--host", "::1"], both) == Address("::1", 7002, "--port")
    assert parsed([], {}) == Address("127.0.0.1", None, "default")


@pytest.mark.parametrize("value", ["abc", "0", "70000", "-1"])
def test_a_bad_port_names_where_it_came_from(value: str) -> None:
    with pytest.raises(AddressError, match=f"GRADIO_SERVER_PORT='{value}' is not a port"):
        parsed([], {"GRADIO_SERVER_PORT": value})


def test_a_taken_port_that_was_asked_for_is_refused_with_what_to_do() -> None:
    with taken_port() as port, pytest.raises(AddressError) as refused:
        choose_port(Address("127.0.0.1", port, "GRADIO_SERVER_PORT"))
    message = str(refused.value)
    assert f"Port {port} on 127.0.0.1 (from GRADIO_SERVER_PORT) is already in use" in message
    assert "--port" in message and "GRADIO_SERVER_PORT=" in message


def test_without_a_port_asked_for_the_next_free_one_is_used() -> None:
    with taken_port() as port:
        chosen = choose_port(Address("127.0.0.1", None, "default"), first=port, tries=20)
    assert port < chosen < port + 20


def test_sd_gradio_on_a_taken_port_says_so_without_a_traceback(tmp_path: Path) -> None:
    with taken_port() as port:
        done = subprocess.run(
            [sys.executable, "sd_gradio.py", "--port", str(port)],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
            env={"PATH": "/usr/bin:/bin", "DALI_DATA_DIR": str(tmp_path / "data")},
        )  # fmt: skip
    assert done.returncode != 0
    assert f"Port {port} on 127.0.0.1 (from --port) is already in use" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "data").exists()  # refused before the studio started


def test_help_names_the_variables_and_defaults() -> None:
    done = subprocess.run([sys.executable, "sd_gradio.py", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0
    for text in (
        "GRADIO_SERVER_PORT",
        "DALI_GRADIO_PORT",
        "GRADIO_SERVER_NAME",
        "7860",
        "127.0.0.1",
    ):
        assert text in done.stdout

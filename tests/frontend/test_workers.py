"""The pool of frontend workers refuses a port another process listens on."""

from __future__ import annotations

import socket

import pytest

from services.frontend.workers import WorkerFailed, _check_port_free


def test_a_port_in_use_is_refused_even_to_so_reuseport() -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as a pool binds
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(WorkerFailed, match=f"127.0.0.1:{port} is in use"):
            _check_port_free("127.0.0.1", port)
    _check_port_free("127.0.0.1", port)  # free again once it is closed

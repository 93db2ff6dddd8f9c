"""
Kernel keepalive options on a real loopback socket.
"""

from __future__ import annotations

import socket

from twisted.trial.unittest import SynchronousTestCase

from twisted_keepalive import TCPKeepalive
from twisted_keepalive.tcp import applyTCPKeepalive, findSocket


class TCPKeepaliveTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(self.sock.close)

    def test_optionsSet(self) -> None:
        applied = applyTCPKeepalive(self.sock, TCPKeepalive(30, 7, 4, userTimeout=12.5))
        self.assertEqual(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        expected = {
            "TCP_KEEPIDLE": 30,
            "TCP_KEEPINTVL": 7,
            "TCP_KEEPCNT": 4,
            "TCP_USER_TIMEOUT": 12500,
        }
        for name, value in expected.items():
            option = getattr(socket, name, None)
            if option is None:
                self.assertNotIn(name, applied)  # skipped cleanly where absent
                continue
            self.assertIn(name, applied)
            self.assertEqual(self.sock.getsockopt(socket.IPPROTO_TCP, option), value)

    def test_findSocketThroughWrappers(self) -> None:
        sock = self.sock

        class Inner:
            def getHandle(self) -> socket.socket:
                return sock

        class TLS:
            transport = Inner()

            def getHandle(self) -> object:
                return object()

        self.assertIs(findSocket(TLS()), sock)
        self.assertIsNone(findSocket(object()))

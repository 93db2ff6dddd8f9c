"""
A listening service that fails the way an operator wants: at start-up,
with one line naming the endpoint and the reason, not a traceback.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError


def _listen(description: str) -> Any:
    from twisted.internet import reactor

    return serverFromString(reactor, description)


class Listener(StreamServerEndpointService):
    """
    Listens at start-up; a port that cannot be had stops twistd with one
    line, not a traceback.
    """

    _raiseSynchronously = True

    def __init__(self, description: str, factory: Any, endpoint: Any = None) -> None:
        self.endpoint = endpoint if endpoint is not None else _listen(description)
        super().__init__(self.endpoint, factory)
        self.description = description

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            why = e.socketError.strerror if e.socketError is not None else str(e)
            raise SystemExit(f"keepconn: cannot listen on {self.description}: {why}") from None

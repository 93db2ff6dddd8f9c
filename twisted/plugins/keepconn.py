"""
The twistd plugin: C{twistd -n keepconn --help}.

Kept tiny and lazy: twistd imports every plugin module to list them, so
this only names the module that builds the service.
"""

from twisted.application.service import ServiceMaker

keepconn = ServiceMaker(
    "twisted-keepalive",
    "twisted_keepalive.tap",
    "Keep TCP connections alive: heartbeats, dead-peer detection, reconnection "
    "(--host) or a server that evicts silent clients (--listen).",
    "keepconn",
)

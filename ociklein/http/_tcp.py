"""
The TCP connection under a transport, for tuning how much it reads or
sends at once during bulk transfers.
"""

from __future__ import annotations

from twisted.internet import tcp
from twisted.protocols.policies import ProtocolWrapper


def tcpConnection(transport: object) -> tcp.Connection | None:
    """
    The TCP connection under C{transport} and wrappers such as the TLS
    guard's; L{None} for anything else (a test's fake transport).
    """
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    return transport if isinstance(transport, tcp.Connection) else None

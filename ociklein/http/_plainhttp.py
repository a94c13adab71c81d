"""
A guard for plain-HTTP listeners against clients that try TLS first.

containers/image clients (skopeo, podman) open a TLS handshake even when told
the registry is insecure, and fall back to HTTP only when it fails.  An HTTP
server that waits for a request line stalls them for many seconds; closing
the connection at the first byte of a TLS ClientHello lets them fall back at
once.
"""

from __future__ import annotations

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import implementer

_TLS_HANDSHAKE = 0x16


@implementer(IHalfCloseableProtocol)
class _RefuseTLS(ProtocolWrapper):
    _checked = False

    def readConnectionLost(self) -> None:
        # A client may half-close after its request and still read the answer.
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.readConnectionLost()
        else:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.writeConnectionLost()

    def dataReceived(self, data: bytes) -> None:
        if not self._checked and data:
            self._checked = True
            if data[0] == _TLS_HANDSHAKE:
                self.transport.abortConnection()  # type: ignore[union-attr]
                return
        super().dataReceived(data)


class RefuseTLSFactory(WrappingFactory):
    """
    Wraps an HTTP factory so that a TLS ClientHello is refused at once.
    """

    protocol = _RefuseTLS
    noisy = False  # no "Starting factory" line per listening port

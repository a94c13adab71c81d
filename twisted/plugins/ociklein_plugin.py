"""
Makes C{twistd ociregistry} available; imports nothing of ociklein until used.
"""

from twisted.application.service import ServiceMaker

ociregistry = ServiceMaker(
    "ociklein OCI registry",
    "ociklein.tap",
    "An OCI Distribution v1.1 container registry.",
    "ociregistry",
)

"""
ociklein's client: an async OCI registry client on treq, OCI image
layouts, and copying images between them.

    from ociklein.client import RegistryClient, copy, push, pull
"""

from ociklein.client._authfile import (
    authFiles,
    loginFile,
    lookupCredentials,
    removeCredentials,
    storeCredentials,
)
from ociklein.client._client import Manifest, RegistryClient, digestOf
from ociklein.client._copy import Clients, CopyResult, copy, pull, push
from ociklein.client._errors import RegistryError
from ociklein.client._layout import ImageLayout
from ociklein.client._progress import Progress
from ociklein.client._reference import (
    LayoutReference,
    Reference,
    ReferenceError,
    parseLocation,
    parseReference,
    splitLayoutTag,
)

__all__ = [
    "Clients",
    "CopyResult",
    "ImageLayout",
    "LayoutReference",
    "Manifest",
    "Progress",
    "Reference",
    "ReferenceError",
    "RegistryClient",
    "RegistryError",
    "authFiles",
    "copy",
    "digestOf",
    "loginFile",
    "lookupCredentials",
    "parseLocation",
    "parseReference",
    "pull",
    "push",
    "removeCredentials",
    "splitLayoutTag",
    "storeCredentials",
]

"""
How a transfer reports itself: the library calls a L{Progress} as blobs
start, advance and finish; the command line renders those calls as a live
display, log lines or JSON.
"""

from __future__ import annotations


class Progress:
    """
    Told about every blob a push, pull or copy moves; this one ignores all
    of it.  Sizes and counts are in bytes.
    """

    def started(self, digest: str, size: int, action: str) -> None:
        """
        A blob of C{size} bytes starts moving; C{action} is C{push} or C{pull}.
        """

    def advanced(self, digest: str, done: int) -> None:
        """
        C{done} bytes of the blob have moved so far (fewer than before when
        a transfer had to start again).
        """

    def finished(self, digest: str, size: int, outcome: str) -> None:
        """
        The blob is where it should be: C{outcome} is C{pushed}, C{pulled},
        C{mounted} or C{skipped} (the destination had it).
        """

    def manifest(self, digest: str, mediaType: str, where: str) -> None:
        """
        A manifest was written to C{where}.
        """

"""
ociklein's log output: one line per event, as text or as JSON, with a
timestamp formatted at most once a second.

twistd's own observer formats a date for every event and runs every line
through twisted.logger's format strings; on a small request that was a fifth
of the reactor's time.  Access lines here are formatted from their fields by
L{AccessRecord}, and a worker's lines, already stamped by the worker, pass
through its parent unchanged.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any

from twisted.logger import ILogObserver, LogLevel, eventAsText
from zope.interface import implementer

FORMATS = ("text", "json")

# The key of an access event's record, and of the worker output relayed by
# the parent (set on the procmon Logger by ociklein._supervisor).
ACCESS_KEY = "ociklein_access"
WORKER_NAMESPACE = "ociklein.worker"


class _Stamp:
    """
    The current UTC time as text, recomputed only when the second changes.
    """

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        return self._text


class AccessRecord:
    """
    The fields of one access log line, formatted only by the observer that
    writes it.
    """

    __slots__ = (
        "bytes",
        "client",
        "duration",
        "method",
        "path",
        "protocol",
        "requestId",
        "status",
        "user",
        "userAgent",
    )

    def __init__(
        self,
        client: str,
        user: str,
        method: str,
        path: str,
        protocol: str,
        status: int,
        bytes: int,
        duration: float,
        userAgent: str,
        requestId: str,
    ) -> None:
        self.client = client
        self.user = user
        self.method = method
        self.path = path
        self.protocol = protocol
        self.status = status
        self.bytes = bytes
        self.duration = duration
        self.userAgent = userAgent
        self.requestId = requestId

    def text(self) -> str:
        """
        The line without timestamp: client, user, request, status, bytes,
        seconds, user agent, request id.
        """
        return (
            f'{self.client} {self.user} "{self.method} {self.path} {self.protocol}" '
            f'{self.status} {self.bytes} {self.duration:.4f} "{self.userAgent}" {self.requestId}'
        )

    def fields(self) -> dict[str, Any]:
        """
        The line's fields under their JSON names.
        """
        return {
            "client": self.client,
            "user": self.user,
            "method": self.method,
            "path": self.path,
            "protocol": self.protocol,
            "status": self.status,
            "bytes": self.bytes,
            "duration": round(self.duration, 6),
            "user_agent": self.userAgent,
            "request_id": self.requestId,
        }


@implementer(ILogObserver)
class LineObserver:
    """
    Writes each event as one line of C{format} (C{"text"} or C{"json"}) to
    C{outFile}; C{worker}, when not 0, tags every line with the worker's
    number.
    """

    def __init__(self, outFile: IO[str], format: str = "text", worker: int = 0) -> None:
        self._out = outFile
        self._json = format == "json"
        self._worker = worker
        self._tag = f"worker {worker} " if worker else ""
        self._stamp = _Stamp()

    def __call__(self, event: dict[str, Any]) -> None:
        record = event.get(ACCESS_KEY)
        if record is not None:
            line = self._access(event, record)
        elif event.get("log_namespace") == WORKER_NAMESPACE and "line" in event:
            line = event["line"]  # already stamped by the worker
            if not line:
                return  # procmon ends each stream with an empty line
        else:
            line = self._other(event)
        self._out.write(line + "\n")
        self._out.flush()

    def _access(self, event: dict[str, Any], record: AccessRecord) -> str:
        stamp = self._stamp(event["log_time"])
        if self._json:
            document = {"time": stamp, "level": "info", "logger": "ociklein.access", **record.fields()}
            if self._worker:
                document["worker"] = self._worker
            return json.dumps(document)
        return f"{stamp} [{self._tag}ociklein.access] {record.text()}"

    def _other(self, event: dict[str, Any]) -> str:
        stamp = self._stamp(event.get("log_time") or time.time())
        level = event.get("log_level")
        levelName = level.name if isinstance(level, type(LogLevel.info)) else "info"
        namespace = event.get("log_namespace", "-")
        message = eventAsText(event, includeTimestamp=False, includeSystem=False, includeTraceback=False)
        failure = event.get("log_failure")
        if self._json:
            document: dict[str, Any] = {
                "time": stamp,
                "level": levelName,
                "logger": namespace,
                "message": message,
            }
            if failure is not None:
                document["traceback"] = failure.getTraceback()
            if self._worker:
                document["worker"] = self._worker
            return json.dumps(document)
        line = f"{stamp} [{self._tag}{namespace}#{levelName}] {message}"
        if failure is not None:
            line += "\n" + failure.getTraceback().rstrip("\n")
        return line


# What the twistd factory below needs, set by Options.postOptions: twistd
# takes its --logger as a dotted name and calls it without arguments.
_twistdSettings: dict[str, Any] = {}


def twistdObserver() -> LineObserver:
    """
    twistd's C{--logger}: a L{LineObserver} on the file twistd would have
    written to (its C{--logfile}, rotated on SIGUSR1 as twistd does, or
    stdout in the foreground).
    """
    settings = _twistdSettings
    name = settings.get("logfile") or ""
    outFile: IO[str]
    if name == "-" or (settings.get("nodaemon") and not name):
        outFile = sys.stdout
    else:
        from twisted.python.logfile import LogFile

        logFile = LogFile.fromFullPath(name or "twistd.log")
        _rotateOnSIGUSR1(logFile)
        outFile = logFile  # type: ignore[assignment]
    return LineObserver(outFile, settings.get("format", "text"), settings.get("worker", 0))


def _rotateOnSIGUSR1(logFile: Any) -> None:
    import signal

    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(logFile.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)


def install(parent: Any, format: str, worker: int = 0) -> None:
    """
    Make the twistd or twist command whose options are C{parent} log
    through a L{LineObserver}, unless it was told to log elsewhere
    (C{--logger}, C{--syslog}).
    """
    if parent is None:
        return
    if "fileLogObserverFactory" in parent:  # twist

        def factory(outFile: IO[str]) -> LineObserver:
            return LineObserver(outFile, format, worker)

        parent["fileLogObserverFactory"] = factory
    elif "logger" in parent and parent["logger"] is None and not parent.get("syslog"):  # twistd
        _twistdSettings.update(
            logfile=parent.get("logfile"), nodaemon=parent.get("nodaemon"), format=format, worker=worker
        )
        parent["logger"] = f"{__name__}.twistdObserver"

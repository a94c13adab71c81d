"""
Maintenance of a registry's storage, written against the maintenance
contracts of L{ociklein.interfaces} so that it works on every backend:
garbage collection (safe while the registry serves), scrub and disk usage.
"""

from ociklein.maintenance.du import RepositoryUsage, UsageReport, diskUsage
from ociklein.maintenance.gc import DEFAULT_GRACE, CollectionReport, Removed, collect
from ociklein.maintenance.scrub import Problem, ScrubReport, scrub

__all__ = [
    "DEFAULT_GRACE",
    "CollectionReport",
    "Problem",
    "Removed",
    "RepositoryUsage",
    "ScrubReport",
    "UsageReport",
    "collect",
    "diskUsage",
    "scrub",
]

"""vitalmon: real-time vital-sign monitoring daemon (sources -> engine -> sinks)."""

from monitor.config import Config, ConfigError, load
from monitor.model import AlertEvent, AlertState, Priority, Reading, Rejection

__version__ = "0.1.0"

__all__ = [
    "AlertEvent",
    "AlertState",
    "Config",
    "ConfigError",
    "Priority",
    "Reading",
    "Rejection",
    "__version__",
    "load",
]

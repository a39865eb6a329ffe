"""Configuration: YAML -> ``${VAR}`` substitution -> complete validation -> frozen models.

One module per area, all re-exported here (``from monitor.config import RulesConfig``):

* :mod:`~monitor.config.base`: the model base, ``ConfigError``, shared validators;
* :mod:`~monitor.config.mqtt`: ``mqtt`` (the broker connection, TLS);
* :mod:`~monitor.config.sources`, :mod:`~monitor.config.sinks`: ``sources[]`` and
  ``store`` items, one schema per ``type``, each naming the module that builds it;
* :mod:`~monitor.config.rules`, :mod:`~monitor.config.trends`: ``rules``;
* :mod:`~monitor.config.profiles`: ``profiles`` and ``beds``;
* :mod:`~monitor.config.service`: ``alerts``, ``engine``, ``log``, ``metrics``, ``privacy``;
* :mod:`~monitor.config.routes`: ``alerts.routes[]`` (alert delivery), one receiver schema
  per ``type``;
* :mod:`~monitor.config.loader`: the whole ``Config``, its checks across sections, and
  loading (``load``, ``parse``), with every error reported at once by its key path.
"""

from __future__ import annotations

from monitor.config.base import ConfigError, VitalKey, parse_topic_template
from monitor.config.loader import Config, load, parse, read_secret, substitute
from monitor.config.mqtt import MqttConfig, TLSConfig
from monitor.config.profiles import (
    BUILTIN_PROFILES,
    BedConfig,
    BedKey,
    Profile,
    ProfileConfig,
)
from monitor.config.routes import (
    Hl7MllpReceiverConfig,
    MqttReceiverConfig,
    ReceiverConfig,
    RouteConfig,
    RouteMatch,
    SmtpReceiverConfig,
    WebhookReceiverConfig,
)
from monitor.config.rules import (
    DEFAULT_PLAUSIBLE,
    DEFAULT_THRESHOLDS,
    FlappingConfig,
    Levels,
    Mode,
    ModesConfig,
    News2Config,
    PlausibilityConfig,
    Range,
    RulesConfig,
    ThresholdConfig,
)
from monitor.config.service import (
    AlertsConfig,
    EngineConfig,
    LogConfig,
    LogLevel,
    MetricsConfig,
    PrivacyConfig,
)
from monitor.config.sinks import InfluxStoreConfig, SqliteStoreConfig, StoreConfig
from monitor.config.sources import (
    DEFAULT_ALIASES,
    Hl7MllpSourceConfig,
    JetStreamSourceConfig,
    MqttSourceConfig,
    SerialSourceConfig,
    SourceConfig,
)
from monitor.config.trends import (
    DEFAULT_BASELINES,
    DEFAULT_SLOPES,
    BaselineConfig,
    BaselineLimit,
    SlopeConfig,
    SlopeLimit,
    TrendConfig,
)

DEFAULT_CONFIG_PATH = "/etc/vitalmon/vitalmon.yaml"

__all__ = [
    "BUILTIN_PROFILES",
    "DEFAULT_ALIASES",
    "DEFAULT_BASELINES",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_PLAUSIBLE",
    "DEFAULT_SLOPES",
    "DEFAULT_THRESHOLDS",
    "AlertsConfig",
    "BaselineConfig",
    "BaselineLimit",
    "BedConfig",
    "BedKey",
    "Config",
    "ConfigError",
    "EngineConfig",
    "FlappingConfig",
    "Hl7MllpReceiverConfig",
    "Hl7MllpSourceConfig",
    "InfluxStoreConfig",
    "JetStreamSourceConfig",
    "Levels",
    "LogConfig",
    "LogLevel",
    "MetricsConfig",
    "Mode",
    "ModesConfig",
    "MqttConfig",
    "MqttReceiverConfig",
    "MqttSourceConfig",
    "News2Config",
    "PlausibilityConfig",
    "PrivacyConfig",
    "Profile",
    "ProfileConfig",
    "Range",
    "ReceiverConfig",
    "RouteConfig",
    "RouteMatch",
    "RulesConfig",
    "SerialSourceConfig",
    "SlopeConfig",
    "SlopeLimit",
    "SmtpReceiverConfig",
    "SourceConfig",
    "SqliteStoreConfig",
    "StoreConfig",
    "TLSConfig",
    "ThresholdConfig",
    "TrendConfig",
    "VitalKey",
    "WebhookReceiverConfig",
    "load",
    "parse",
    "parse_topic_template",
    "read_secret",
    "substitute",
]

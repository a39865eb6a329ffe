"""The whole configuration: the top-level ``Config``, its checks across sections, and
loading: YAML -> ``${VAR}`` substitution -> complete validation -> frozen models.

No I/O beyond reading the file itself (and checking that referenced files exist):
nothing connects here. Every problem is collected and reported at once, each with its
key path (``mqtt.port``, ``sources[0].topic``), so a clinical engineer fixes a config in
one pass instead of one error per restart.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from monitor.config.base import ConfigError, _Model, first_line
from monitor.config.mqtt import MqttConfig
from monitor.config.paths import KeyPath, join, key_path, loc
from monitor.config.profiles import (
    BUILTIN_PROFILES,
    BedConfig,
    BedKey,
    Profile,
    ProfileConfig,
    resolve,
)
from monitor.config.rules import RulesConfig
from monitor.config.service import (
    AlertsConfig,
    EngineConfig,
    LogConfig,
    MetricsConfig,
    PrivacyConfig,
)
from monitor.config.sinks import InfluxStoreConfig, SqliteStoreConfig, StoreConfig
from monitor.config.sources import MqttSourceConfig, SourceConfig
from monitor.config.web import WebConfig

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _default_store() -> list[StoreConfig]:
    return [SqliteStoreConfig()]


def _default_sources() -> list[SourceConfig]:
    return [MqttSourceConfig()]


class Config(_Model):
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    sources: list[SourceConfig] = Field(default_factory=_default_sources)
    #: One sink or a list of sinks.
    store: list[StoreConfig] = Field(default_factory=_default_store)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    rules: RulesConfig = Field(default_factory=RulesConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    #: The web central station (``vitalmon web``).
    web: WebConfig = Field(default_factory=WebConfig)
    #: Limits per kind of patient, merged over the built-in ``adult``/``copd``/``opioid``.
    profiles: dict[str, ProfileConfig] = Field(default_factory=dict)
    #: Beds expected to send data, keyed ``ward/bed`` (``icu/7``), with their profile: a
    #: bed listed here that never sends anything raises ``device.stale`` after
    #: ``rules.stale_after_s``.
    beds: dict[BedKey, BedConfig] = Field(default_factory=dict)
    #: Spool for store-and-forward when ``store`` has no sqlite sink.
    spool_path: str = "/var/lib/vitalmon/spool.db"

    @field_validator("store", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return _default_type([v] if isinstance(v, Mapping) else v, "sqlite")

    @field_validator("sources", mode="before")
    @classmethod
    def _source_type(cls, v: Any) -> Any:
        return _default_type(v, "mqtt")

    @field_validator("sources")
    @classmethod
    def _some_source(cls, v: list[SourceConfig]) -> list[SourceConfig]:
        if not v:
            raise ValueError("at least one source is needed")
        streams = [s for s in v if s.type == "jetstream"]
        if streams and len(v) > 1:
            raise ValueError(
                "a jetstream source is the only source of its instance: every bed belongs "
                "to a partition of the cluster, owned by one instance (a serial or HL7 "
                "gateway publishes to the cluster's MQTT listener instead; docs/scaling.md)"
            )
        return v

    @model_validator(mode="after")
    def _profiles_resolve(self) -> Config:
        errors = self.resolve_profiles()[1]
        for key, bed in self.beds.items():
            if bed.profile not in self.profile_names:
                errors.append(
                    f"beds.{key}.profile: unknown profile {bed.profile!r} "
                    f"(known: {', '.join(sorted(self.profile_names))})"
                )
        if errors:
            raise ValueError("\n".join(errors))
        return self

    @property
    def profile_names(self) -> set[str]:
        return set(BUILTIN_PROFILES) | set(self.profiles)

    def resolve_profiles(self) -> tuple[dict[str, Profile], list[str]]:
        """Every profile's effective limits (``rules.thresholds`` <- built-in <- config);
        -> (profiles, errors with their key paths)."""
        return resolve(self.rules, self.profiles)

    def bed_profiles(self) -> dict[tuple[str, str], str]:
        """``beds`` as (ward, bed) -> profile name."""
        return {(k.split("/")[0], k.split("/")[1]): b.profile for k, b in self.beds.items()}

    def beds_keys(self) -> set[tuple[str, str]]:
        return set(self.expected_beds)

    @property
    def expected_beds(self) -> list[tuple[str, str]]:
        return [(k.split("/")[0], k.split("/")[1]) for k in self.beds]

    @field_validator("store")
    @classmethod
    def _one_journal(cls, v: list[StoreConfig]) -> list[StoreConfig]:
        problems = []
        if sum(1 for s in v if s.type == "sqlite") > 1:
            problems.append(
                "at most one sqlite store (it is the journal remote sinks forward from)"
            )
        names = [s.sink_name for s in v if isinstance(s, InfluxStoreConfig)]
        if len(names) != len(set(names)):
            problems.append("two influxdb sinks with the same url and bucket need distinct names")
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @property
    def journal(self) -> SqliteStoreConfig:
        """The local SQLite store; with only remote sinks, a spool beside the default path."""
        for sink in self.store:
            if isinstance(sink, SqliteStoreConfig):
                return sink
        return SqliteStoreConfig(path=self.spool_path, raw_days=1, aggregate_days=1)

    @property
    def remote_sinks(self) -> list[InfluxStoreConfig]:
        return [s for s in self.store if not isinstance(s, SqliteStoreConfig)]

    @property
    def sqlite_path(self) -> str | None:
        for sink in self.store:
            if isinstance(sink, SqliteStoreConfig):
                return sink.path
        return None


def _default_type(v: Any, default: str) -> Any:
    """``type`` has a default, but a discriminated union needs the tag: fill it in."""
    if isinstance(v, list):
        return [{"type": default, **i} if isinstance(i, Mapping) else i for i in v]
    return v


# -------------------------------------------------------------------------- loading


def substitute(node: Any, env: Mapping[str, str], path: str, errors: list[str]) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a parsed YAML tree."""
    if isinstance(node, str):

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            errors.append(f"{path or '<root>'}: environment variable {name} is not set")
            return ""

        out = _VAR.sub(repl, node)
        if out != node and _VAR.fullmatch(node):
            # A whole-value substitution may produce a number, bool or null.
            try:
                return yaml.safe_load(out) if out else None
            except yaml.YAMLError:
                return out
        return out
    if isinstance(node, Mapping):
        return {k: substitute(v, env, join(path, str(k)), errors) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute(v, env, f"{path}[{i}]", errors) for i, v in enumerate(node)]
    return node


def _target(data: dict[str, Any], path: KeyPath) -> tuple[KeyPath, KeyPath, bool] | None:
    """Where the value an error is about sits in ``data`` (or the deepest part of its
    path the document has), and the error path at or under which later errors are
    consequences of taking it out, and whether it is a list item (the list's later items
    move up: their errors would be misplaced); None when the error is about the whole
    document."""
    node: Any = data
    where: list[int | str] = []
    in_list = False
    end = 0
    for i, part in enumerate(path):
        if isinstance(node, Mapping) and isinstance(part, int):
            continue  # `store: {...}` is the list `[{...}]` to pydantic
        if isinstance(node, list):
            if not (isinstance(part, int) and 0 <= part < len(node)):
                break
        elif not (isinstance(node, Mapping) and part in node):
            break
        in_list = isinstance(node, list)
        node, end = node[part], i + 1
        where.append(part)
    if not where:
        return None
    return tuple(where), path[: end - 1] if in_list else path[:end], in_list


def _take_out(data: dict[str, Any], where: KeyPath) -> bool:
    """Remove the value at ``where`` from ``data`` (in place), so that its default
    applies; -> whether that emptied a list, which then goes as well (its default)."""
    parents: list[Any] = [data]
    for part in where[:-1]:
        parents.append(parents[-1][part])
    if where[0] == "profiles" and len(where) == 2:
        parents[-1][where[-1]] = {}  # keep the name: `beds` may refer to it
        return False
    del parents[-1][where[-1]]
    if isinstance(parents[-1], list) and not parents[-1] and len(where) >= 2:
        del parents[-2][where[-2]]
        return True
    return False


def _order(where: KeyPath) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, p) if isinstance(p, int) else (1, str(p)) for p in where)


def _messages(err: Any) -> list[str]:
    msg = str(err["msg"]).removeprefix("Value error, ")
    if not err["loc"] and msg.startswith(("profiles.", "beds.")):
        return msg.splitlines()  # cross-section checks name their own paths
    return [f"{loc(err['loc'])}: {msg}"]


#: Validation passes at most (each one removes at least one invalid value).
_MAX_PASSES = 25


def _validate(data: dict[str, Any]) -> tuple[Config | None, list[str]]:
    """-> (the config, []) or (None, every error).

    A model's own checks across its fields (``reconnect_max_s >= reconnect_min_s``, a
    window covering the delays, beds naming known profiles) run only once all of its
    fields are valid, so a single bad value (an unknown vital, a port out of range)
    would hide every such check around it. So each invalid value is taken out (its
    default applies) and the document validated again, until nothing more is found.
    Errors under a value taken out are its consequences, and are not reported.
    """
    errors: list[str] = []
    removed: list[tuple[KeyPath, bool]] = []  # (path, errors only strictly under it)

    def consequence(path: KeyPath) -> bool:
        return any(path[: len(p)] == p and not (strict and path == p) for p, strict in removed)

    for _ in range(_MAX_PASSES):
        try:
            cfg = Config.model_validate(data)
        except ValidationError as exc:
            found = exc.errors()
        else:
            return (None, errors) if errors else (cfg, [])
        paths = [key_path(err["loc"]) for err in found]
        for path, err in zip(paths, found, strict=True):
            if consequence(path):
                continue
            errors += [m for m in _messages(err) if m not in errors]
        targets = {t[0]: t[1:] for t in (_target(data, path) for path in paths) if t}
        outer = [w for w in targets if not any(w[: len(o)] == o != w for o in targets)]
        for where in sorted(outer, key=_order, reverse=True):  # list indices stay right
            emptied = _take_out(data, where)
            prefix, item = targets[where]
            # a list item: errors of the list itself still count, unless it is gone
            removed.append((prefix, item and not emptied))
        if not outer:
            break
    return None, errors


def parse(data: Any, env: Mapping[str, str] | None = None) -> Config:
    """Validate a parsed YAML document; raise ConfigError listing every problem."""
    errors: list[str] = []
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(["<root>: the config must be a mapping of sections"])
    mqtt = data.get("mqtt")
    raw_password = mqtt.get("password") if isinstance(mqtt, Mapping) else None
    if raw_password is not None and not (
        isinstance(raw_password, str) and _VAR.fullmatch(raw_password.strip())
    ):
        errors.append(
            "mqtt.password: never write the password in the file; use "
            "password_file, or password: ${MQTT_PASSWORD} from the environment"
        )
    data = substitute(data, os.environ if env is None else env, "", errors)
    cfg, invalid = _validate(data)
    errors += invalid
    if errors or cfg is None:
        raise ConfigError(errors)
    return cfg


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read config: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{p}: not valid YAML: {exc}"]) from None
    return parse(data, env)


def read_secret(path: str) -> str:
    """First line of a secret file, without the newline ("" for no path, an empty file or
    an empty first line: never an IndexError). Whether an empty secret makes sense is
    for the field to say: every secret file of the configuration refuses one at load
    time (:func:`monitor.config.base.secret_in`)."""
    return first_line(path) if path else ""

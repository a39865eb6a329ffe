"""Configuration: substitution, complete validation with key paths, defaults; check-config CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from monitor.config import (
    DEFAULT_ALIASES,
    DEFAULT_THRESHOLDS,
    Config,
    ConfigError,
    RulesConfig,
    load,
    parse,
    parse_topic_template,
    substitute,
)

#: The documented configuration shipped with the project (every key, with its default).
SHIPPED = Path(__file__).resolve().parent.parent / "config" / "vitalmon.yaml"

#: A deployment in the style of the issue's example.
EXAMPLE = """\
# vitalmon.yaml: one ICU, monitors publishing to a local mosquitto
mqtt:
  host: ${MQTT_HOST:-127.0.0.1}
  port: ${MQTT_PORT:-1883}
  client_id: vitalmon-icu
  username: ${MQTT_USER:-vitalmon}
  protocol: 5
  keepalive_s: 30
  session_expiry_s: 604800
  reconnect_min_s: 0.5
  reconnect_max_s: 30
sources:
  - type: mqtt
    topic: "vitals/{ward}/{bed}/{device}"
    qos: 1
    max_payload_bytes: 65536
    aliases: {SAT: spo2, PLS: hr}
store:
  type: sqlite
  path: ${VITALMON_DB:-/var/lib/vitalmon/vitals.db}
  batch_size: 1000
alerts:
  topic: "alerts/{ward}/{bed}"
  qos: 1
rules:
  window_s: 600
  max_lag_s: 60
  max_gap_s: 30
  max_future_s: 300
  thresholds:
    spo2: {low: {warn: 90, crit: 85}, delay_s: 15, clear_band: 2}
    hr:
      low: {warn: 50, crit: 40}
      high: {warn: 120, crit: 140}
      delay_s: 10
      clear_band: 5
    rr: {low: {warn: 8, crit: 5}, high: {warn: 24, crit: 30}, delay_s: 15, clear_band: 2}
    sbp: {low: {warn: 90, crit: 80}, high: {warn: 180, crit: 200}, clear_band: 5}
    map: {low: {warn: 65, crit: 55}, delay_s: 10, clear_band: 3}
    temp:
      low: {warn: 35.5, crit: 35.0}
      high: {warn: 38.0, crit: 39.5}
      delay_s: 0
      clear_band: 0.2
engine:
  queue_size: 10000
log:
  level: info
"""


def from_yaml(text: str, env: dict[str, str] | None = None) -> Config:
    return parse(yaml.safe_load(textwrap.dedent(text)), env={} if env is None else env)


def errors_of(text_or_data: str | dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    data = (
        yaml.safe_load(textwrap.dedent(text_or_data))
        if isinstance(text_or_data, str)
        else text_or_data
    )
    with pytest.raises(ConfigError) as info:
        parse(data, env={} if env is None else env)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def paths(errors: list[str]) -> list[str]:
    return [e.split(": ", 1)[0] for e in errors]


# ---------------------------------------------------------------------- the example


def test_example_config_validates():
    cfg = from_yaml(EXAMPLE)
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.client_id) == ("127.0.0.1", 1883, "vitalmon-icu")
    assert cfg.mqtt.username == "vitalmon"
    assert cfg.mqtt.protocol == "5"
    (src,) = cfg.sources
    assert (src.type, src.topic, src.qos) == ("mqtt", "vitals/{ward}/{bed}/{device}", 1)
    assert src.aliases == {"SAT": "spo2", "PLS": "hr"}
    assert cfg.sqlite_path == "/var/lib/vitalmon/vitals.db"
    assert cfg.alerts.topic == "alerts/{ward}/{bed}"
    th = cfg.rules.thresholds
    assert set(th) == set(DEFAULT_THRESHOLDS)
    assert th["spo2"].low is not None
    assert (th["spo2"].low.warn, th["spo2"].low.crit, th["spo2"].delay_s) == (90, 85, 15)
    assert th["sbp"].delay_s == 0
    assert cfg.engine.queue_size == 10_000
    assert cfg.log.level == "info"


def test_shipped_config_validates_and_is_the_defaults():
    cfg = load(SHIPPED, env={})
    assert cfg == Config()  # "every key, with its default"
    assert cfg == parse({}, env={})


def test_example_config_with_environment():
    env = {"MQTT_HOST": "broker.icu.local", "MQTT_PORT": "8883", "VITALMON_DB": "/data/v.db"}
    cfg = from_yaml(EXAMPLE, env)
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.sqlite_path) == (
        "broker.icu.local",
        8883,
        "/data/v.db",
    )


def test_empty_config_gives_working_defaults():
    for data in (None, {}, {"rules": {"window_s": 300}}):
        cfg = parse(data, env={})
        assert cfg.mqtt.port == 1883
        assert [s.topic for s in cfg.sources] == ["vitals/{ward}/{bed}/{device}"]
        assert cfg.sqlite_path == "/var/lib/vitalmon/vitals.db"
        # the default limits apply without a thresholds section
        assert set(cfg.rules.thresholds) == set(DEFAULT_THRESHOLDS)
    assert set(RulesConfig().thresholds) == set(DEFAULT_THRESHOLDS)


def test_default_limits_are_the_documented_ones():
    th = RulesConfig().thresholds
    expected = {
        "spo2": ((90, 85), None, 15, 2),
        "hr": ((50, 40), (120, 140), 10, 5),
        "rr": ((8, 5), (24, 30), 15, 2),
        "sbp": ((90, 80), (180, 200), 0, 5),
        "map": ((65, 55), None, 10, 3),
        "temp": ((35.5, 35.0), (38.0, 39.5), 0, 0.2),
    }
    for vital, (low, high, delay, band) in expected.items():
        t = th[vital]
        assert t.enabled
        assert ((t.low.warn, t.low.crit) if t.low else None) == low
        assert ((t.high.warn, t.high.crit) if t.high else None) == high
        assert (t.delay_s, t.clear_band) == (delay, band)


# --------------------------------------------------------------------- substitution


@pytest.mark.parametrize(
    ("raw", "env", "expected"),
    [
        ("${PORT:-1883}", {}, 1883),
        ("${PORT:-1883}", {"PORT": "8883"}, 8883),
        ("${PORT}", {"PORT": "1884"}, 1884),
        ("${X:-0.5}", {}, 0.5),
        ("${X:-true}", {}, True),
        ("${X:-}", {}, None),
        ("${HOST:-localhost}", {}, "localhost"),
        ("tcp://${HOST}:${PORT}", {"HOST": "h", "PORT": "1"}, "tcp://h:1"),  # partial: text
        ("${A}${B}", {"A": "1", "B": "2"}, "12"),
        ("no vars", {}, "no vars"),
        ("$HOME and {bed}", {}, "$HOME and {bed}"),
    ],
)
def test_substitute_values(raw: str, env: dict[str, str], expected: Any):
    errors: list[str] = []
    assert substitute(raw, env, "x", errors) == expected
    assert errors == []


def test_substitute_walks_mappings_and_lists_with_paths():
    errors: list[str] = []
    tree = {"a": {"b": ["${OK}", "${MISSING}"]}, "c": 3}
    assert substitute(tree, {"OK": "yes"}, "", errors) == {"a": {"b": [True, None]}, "c": 3}
    assert errors == ["a.b[1]: environment variable MISSING is not set"]


def test_port_from_env_default_becomes_int():
    cfg = parse({"mqtt": {"port": "${PORT:-1883}"}}, env={})
    assert cfg.mqtt.port == 1883
    assert type(cfg.mqtt.port) is int
    assert parse({"mqtt": {"port": "${PORT:-1883}"}}, env={"PORT": "2883"}).mqtt.port == 2883


def test_protocol_as_yaml_number_or_from_env():
    assert from_yaml("mqtt: {protocol: 5}").mqtt.protocol == "5"
    assert from_yaml("mqtt: {protocol: '${P:-5}'}").mqtt.protocol == "5"
    assert from_yaml("mqtt: {protocol: 3.1.1}").mqtt.protocol == "3.1.1"
    assert paths(errors_of("mqtt: {protocol: 4}")) == ["mqtt.protocol"]


def test_missing_env_var_without_default_is_reported():
    errs = errors_of({"mqtt": {"host": "${MQTT_HOST}"}, "store": {"path": "${DB}/v.db"}})
    assert "mqtt.host: environment variable MQTT_HOST is not set" in errs
    assert "store.path: environment variable DB is not set" in errs


def test_missing_env_var_in_an_optional_field_is_still_an_error():
    errs = errors_of({"mqtt": {"username": "${MQTT_USER}"}})
    assert errs == ["mqtt.username: environment variable MQTT_USER is not set"]


def test_env_value_that_does_not_validate():
    assert paths(errors_of({"mqtt": {"port": "${PORT}"}}, env={"PORT": "http"})) == ["mqtt.port"]


# ------------------------------------------------------------- errors all at once


def test_three_errors_reported_at_once_with_paths():
    errs = errors_of(
        """
        mqtt: {port: 70000}
        sources:
          - type: mqtt
            topic: "vitals/{ward}/{device}"
        rules:
          thresholds:
            spo2: {low: {warn: 90, crit: 95}}
        """
    )
    assert paths(errs) == ["mqtt.port", "sources[0].topic", "rules.thresholds.spo2"]
    assert "{bed}" in errs[1]
    assert "crit" in errs[2]
    assert "warn" in errs[2]


def test_many_errors_in_one_pass():
    errs = errors_of(
        {
            "mqtt": {"port": 0, "keepalive_s": 1, "password_file": "/nonexistent/pw"},
            "sources": [{"topic": "vitals/{bed}"}, {"topic": "v/+/{bed}", "qos": 3}],
            "store": [{"type": "sqlite", "batch_size": 0}, {"type": "postgres"}],
            "alerts": {"topic": "alerts/{ward}/{nurse}"},
            "rules": {
                "window_s": 1,
                "thresholds": {"hr": {"high": {}}},
            },
            "log": {"level": "verbose"},
            "extra_section": {},
        }
    )
    expected = {
        "mqtt.port",
        "mqtt.keepalive_s",
        "mqtt.password_file",
        "sources[1].topic",
        "sources[1].qos",
        "store[0].batch_size",
        "store[1]",
        "alerts.topic",
        "rules.window_s",
        "rules.thresholds.hr.high",
        "log.level",
        "extra_section",
    }
    assert set(paths(errs)) == expected


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"mqtt": {"hots": "x"}}, "mqtt.hots"),
        ({"bogus": 1}, "bogus"),
        ({"sources": [{"type": "mqtt", "topics": "a/{bed}"}]}, "sources[0].topics"),
        ({"store": {"type": "sqlite", "file": "x.db"}}, "store[0].file"),
        (
            {"rules": {"thresholds": {"spo2": {"low": {"warn": 90, "alarm": 85}}}}},
            "rules.thresholds.spo2.low.alarm",
        ),
        ({"rules": {"thresholds": {"spo2": {"delay": 15}}}}, "rules.thresholds.spo2.delay"),
        ({"rules": {"max_lag": 5}}, "rules.max_lag"),
    ],
)
def test_unknown_keys_rejected(data: dict[str, Any], path: str):
    errs = errors_of(data)
    assert paths(errs) == [path]
    assert "Extra inputs are not permitted" in errs[0]


def test_not_a_mapping():
    with pytest.raises(ConfigError) as info:
        parse(["mqtt"], env={})
    assert info.value.errors == ["<root>: the config must be a mapping of sections"]


@pytest.mark.parametrize(
    ("template", "ok"),
    [
        ("vitals/{ward}/{bed}/{device}", True),
        ("icu/{bed}", True),
        ("{bed}", True),
        ("vitals/{ward}/{device}", False),  # {bed} is required
        ("vitals/+/{bed}", False),
        ("vitals/#", False),
        ("vitals/bed{bed}", False),
        ("vitals/{bed}/{bed}", False),
        ("$SYS/{bed}", False),
        ("", False),
    ],
)
def test_topic_templates(template: str, ok: bool):
    if ok:
        assert "{bed}" in parse_topic_template(template)
        assert parse({"sources": [{"topic": template}]}, env={}).sources[0].topic == template
    else:
        with pytest.raises(ValueError):
            parse_topic_template(template)
        assert paths(errors_of({"sources": [{"topic": template}]})) == ["sources[0].topic"]


def test_aliases_must_map_to_known_vitals():
    assert paths(errors_of({"sources": [{"aliases": {"sat": "oxygen"}}]})) == ["sources[0].aliases"]
    assert "spo2" in DEFAULT_ALIASES.values()


def test_no_sources_is_an_error():
    assert paths(errors_of({"sources": []})) == ["sources"]


# --------------------------------------------------------------------------- store


def test_store_accepts_a_mapping_or_a_list():
    one = parse({"store": {"type": "sqlite", "path": "/data/a.db"}}, env={})
    many = parse({"store": [{"type": "sqlite", "path": "/data/a.db"}]}, env={})
    assert one.store == many.store
    assert one.sqlite_path == "/data/a.db"
    two = parse(
        {
            "store": [
                {"path": "/data/a.db", "batch_size": 5},
                {"type": "influxdb", "url": "http://tsdb:8086/", "bucket": "vitals"},
            ]
        },
        env={},
    )
    assert two.journal.path == "/data/a.db"
    assert two.journal.batch_size == 5
    assert [r.sink_name for r in two.remote_sinks] == ["influxdb:http://tsdb:8086/vitals"]


def test_two_sqlite_stores_are_refused_and_remote_only_gets_a_spool():
    with pytest.raises(ConfigError) as exc:
        parse({"store": [{"path": "/data/a.db"}, {"path": "/data/b.db"}]}, env={})
    assert exc.value.errors[0].startswith("store: at most one sqlite store")
    remote = parse(
        {
            "store": {"type": "influxdb", "url": "http://t:8086", "bucket": "b"},
            "spool_path": "/s.db",
        },
        env={},
    )
    assert remote.sqlite_path is None
    assert remote.journal.path == "/s.db"


def test_type_may_be_left_out():
    cfg = parse({"store": {"path": "/data/a.db"}, "sources": [{"topic": "v/{bed}"}]}, env={})
    assert (cfg.store[0].type, cfg.sources[0].type) == ("sqlite", "mqtt")


def test_unknown_store_type():
    errs = errors_of({"store": {"type": "postgres", "dsn": "x"}})
    assert paths(errs) == ["store[0]"]
    assert "sqlite" in errs[0]


def test_unknown_types_name_every_known_one():
    assert errors_of({"sources": [{"type": "modbus"}], "store": {"type": "postgres"}}) == [
        "sources[0]: Input tag 'modbus' found using 'type' does not match any of the "
        "expected tags: 'mqtt', 'serial', 'hl7-mllp', 'jetstream'",
        "store[0]: Input tag 'postgres' found using 'type' does not match any of the "
        "expected tags: 'sqlite', 'influxdb'",
    ]


def test_every_source_and_remote_sink_type_is_built_by_its_module():
    """Each ``type`` of ``sources[]`` and of a remote ``store`` item names the module
    that registers its factory (the daemon builds them from the registries)."""
    from monitor.config.paths import schemas
    from monitor.config.sinks import StoreConfig
    from monitor.config.sources import SourceConfig
    from monitor.sinks import REMOTE_SINKS
    from monitor.sources import SOURCES

    for tag, schema in schemas(SourceConfig).items():
        assert callable(SOURCES.factory(tag, schema.implementation)), tag
    for tag, schema in schemas(StoreConfig).items():
        if tag != "sqlite":  # the journal itself, built first
            assert callable(REMOTE_SINKS.factory(tag, schema.implementation)), tag


def test_files_to_read_and_time_zones_are_checked_where_they_are_given():
    gone = "/nonexistent/vitalmon-secret"
    errs = errors_of(
        {
            "mqtt": {"password_file": gone, "tls": {"ca_file": gone}},
            "sources": [
                {
                    "type": "serial",
                    "port": "/dev/x",
                    "format": "csv",
                    "bed": "1",
                    "timezone": "X/Y",
                },
                {"type": "hl7-mllp", "timezone": "Mars/Olympus"},
            ],
            "store": [{"type": "influxdb", "url": "http://db", "bucket": "b", "token_file": gone}],
            "privacy": {"key_file": gone},
        }
    )
    assert errs == [
        f"mqtt.password_file: cannot read password file {gone!r}",
        f"mqtt.tls.ca_file: cannot read {gone!r}",
        "sources[0].timezone: unknown time zone 'X/Y' (an IANA name: Europe/Paris)",
        "sources[1].timezone: unknown time zone 'Mars/Olympus' (an IANA name: Europe/Paris)",
        f"store[0].token_file: cannot read {gone!r}",
        f"privacy.key_file: cannot read {gone!r}",
    ]


# -------------------------------------------------------------------------- rules


def test_giving_only_delay_keeps_default_limits():
    th = parse({"rules": {"thresholds": {"spo2": {"delay_s": 30}}}}, env={}).rules.thresholds
    assert th["spo2"].delay_s == 30
    assert th["spo2"].low is not None
    assert (th["spo2"].low.warn, th["spo2"].low.crit) == (90, 85)
    assert th["spo2"].clear_band == 2
    assert th["hr"].delay_s == 10  # the vitals not named keep all their defaults


def test_threshold_for_a_vital_without_defaults():
    th = parse({"rules": {"thresholds": {"etco2": {"high": {"warn": 50}}}}}, env={}).rules
    assert th.thresholds["etco2"].high is not None
    assert th.thresholds["etco2"].high.warn == 50
    assert set(th.thresholds) == {*DEFAULT_THRESHOLDS, "etco2"}


def test_disable_a_vital():
    th = parse({"rules": {"thresholds": {"sbp": None, "temp": {"enabled": False}}}}, env={})
    assert not th.rules.thresholds["sbp"].enabled
    assert not th.rules.thresholds["temp"].enabled
    assert th.rules.thresholds["hr"].enabled


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"low": {"warn": 90, "crit": 95}}, "low.crit"),
        ({"high": {"warn": 120, "crit": 110}, "low": None}, "high.crit"),
        ({"low": {"warn": 90}, "high": {"warn": 80}}, "below"),
        ({"low": {}}, "warn, crit or both"),
        ({"delay_s": -1}, "greater than or equal"),
        ({"clear_band": -0.5}, "greater than or equal"),
    ],
)
def test_bad_thresholds(spec: dict[str, Any], fragment: str):
    errs = errors_of({"rules": {"thresholds": {"spo2": spec}}})
    assert len(errs) == 1
    assert errs[0].startswith("rules.thresholds.spo2")
    assert fragment in errs[0]


def test_unknown_vital_in_thresholds():
    errs = errors_of({"rules": {"thresholds": {"glucose": {"low": {"warn": 4}}}}})
    assert paths(errs) == ["rules.thresholds.glucose"]
    assert "unknown vital 'glucose'" in errs[0]


def test_reconnect_backoff_order():
    errs = errors_of({"mqtt": {"reconnect_min_s": 5, "reconnect_max_s": 1}})
    assert paths(errs) == ["mqtt"]
    assert "reconnect_max_s" in errs[0]


# ---------------------------------------------------------------------- load + CLI


def test_load_reads_a_file(tmp_path: Path):
    f = tmp_path / "vitalmon.yaml"
    f.write_text(EXAMPLE)
    assert load(f, env={"MQTT_PORT": "1999"}).mqtt.port == 1999
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "missing.yaml")
    assert "cannot read config" in info.value.errors[0]
    f.write_text("mqtt: [unclosed")
    with pytest.raises(ConfigError) as info:
        load(f)
    assert "not valid YAML" in info.value.errors[0]


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "VITALMON_"))}
    return subprocess.run(
        [sys.executable, "-m", "monitor", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_cli_check_config_ok(tmp_path: Path):
    f = tmp_path / "vitalmon.yaml"
    f.write_text(EXAMPLE)
    proc = check_config(f)
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout
    assert str(f) in proc.stdout


def test_cli_check_config_shipped_file():
    proc = check_config(SHIPPED)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("OK (1 source(s), 1 store(s), thresholds for 6 vitals)")


def test_cli_check_config_lists_every_error(tmp_path: Path):
    f = tmp_path / "bad.yaml"
    f.write_text(
        textwrap.dedent(
            """
            mqtt: {port: 70000, host: "${NO_SUCH_VAR_FOR_VITALMON}"}
            sources:
              - type: mqtt
                topic: "vitals/{ward}/{device}"
            rules:
              thresholds:
                spo2: {low: {warn: 90, crit: 95}}
            """
        )
    )
    proc = check_config(f)
    assert proc.returncode == 1
    assert "OK" not in proc.stdout
    for path in ("mqtt.port", "mqtt.host", "sources[0].topic", "rules.thresholds.spo2"):
        assert f"  {path}: " in proc.stderr, proc.stderr
    assert "NO_SUCH_VAR_FOR_VITALMON" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_config_lists_every_error_after_an_unknown_vital(tmp_path: Path):
    """An unknown vital (or any bad value) must not hide the other errors: those of the
    other keys, nor the checks across keys that need valid values (backoff order, window,
    profiles, beds naming profiles)."""
    f = tmp_path / "bad.yaml"
    f.write_text(
        textwrap.dedent(
            """
            mqtt: {port: 0, reconnect_min_s: 10, reconnect_max_s: 1}
            sources:
              - topic: "vitals/{ward}/{device}"
            rules:
              window_s: 20
              thresholds:
                spo3: {low: {warn: 90}}
                spo2: {low: {warn: 90, crit: 95}, high: {warn: 99, crit: 98}}
              trends: {slope: {pulse: {up: {rate: 1}}}}
            alerts: {qos: 3}
            profiles:
              cardiac:
                thresholds:
                  hr: {low: {warn: 40, crit: 45}}
            beds:
              icu/7: {profile: nosuch}
              bad: {}
            """
        )
    )
    proc = check_config(f)
    assert proc.returncode == 1
    listed = [line.strip() for line in proc.stderr.splitlines()[1:]]
    assert sorted(paths(listed)) == sorted(
        [
            "mqtt.port",
            "mqtt",  # reconnect_max_s < reconnect_min_s
            "sources[0].topic",
            "rules.thresholds.spo3",
            "rules.thresholds.spo2",
            "rules.trends.slope.pulse",
            "rules",  # window_s does not cover delay_s + max_gap_s
            "alerts.qos",
            "profiles.cardiac.thresholds.hr",
            "beds.icu/7.profile",
            "beds.bad",
        ]
    ), proc.stderr
    by_path = dict(line.split(": ", 1) for line in listed)
    assert by_path["rules.thresholds.spo3"].startswith("unknown vital 'spo3'")
    assert by_path["rules.trends.slope.pulse"].startswith("unknown vital 'pulse'")
    assert "low.crit (95.0)" in by_path["rules.thresholds.spo2"]
    assert "high.crit (98.0)" in by_path["rules.thresholds.spo2"]  # both sides, not the first
    assert "reconnect_max_s must be >= reconnect_min_s" in by_path["mqtt"]
    assert "window_s (20)" in by_path["rules"]
    assert "low.crit (45.0)" in by_path["profiles.cardiac.thresholds.hr"]
    assert "unknown profile 'nosuch'" in by_path["beds.icu/7.profile"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # a bad list item: no error about the list it was taken out of
        (
            {"sources": [{"type": "modbus"}, {"topic": "x/{ward}"}]},
            ["sources[0]", "sources[1].topic"],
        ),
        # a required key with a bad value: not also "missing"
        (
            {"rules": {"plausibility": {"ranges": {"hr": {"low": "x", "high": 10}}}}},
            ["rules.plausibility.ranges.hr.low"],
        ),
        # a profile that is not a mapping: beds naming it get no "unknown profile"
        (
            {"profiles": {"cardiac": 5}, "beds": {"icu/7": {"profile": "cardiac"}}},
            ["profiles.cardiac"],
        ),
        (
            {"store": {"type": "sqlite", "batch_size": 0}, "mqtt": {"port": 0}},
            ["mqtt.port", "store[0].batch_size"],
        ),
        # the only source is bad: no "at least one source", and the beds are still checked
        (
            {"sources": [{"type": "modbus"}], "beds": {"icu/1": {"profile": "zz"}}},
            ["sources[0]", "beds.icu/1.profile"],
        ),
        # a bad item does not hide the check of the whole list
        (
            {
                "store": [
                    {"type": "sqlite"},
                    {"type": "sqlite"},
                    {"type": "influxdb", "url": "x", "bucket": "b"},
                ]
            },
            ["store[2].url", "store"],
        ),
    ],
)
def test_no_error_is_a_consequence_of_another(data: dict[str, Any], expected: list[str]):
    assert paths(errors_of(data)) == expected


def test_cli_check_config_missing_file(tmp_path: Path):
    proc = check_config(tmp_path / "nope.yaml")
    assert proc.returncode == 1
    assert "cannot read config" in proc.stderr


def test_window_must_cover_the_longest_delay():
    with pytest.raises(ConfigError) as exc:
        parse({"rules": {"window_s": 60, "thresholds": {"spo2": {"delay_s": 45}}}})
    assert any(e.startswith("rules: window_s (60) must cover") for e in exc.value.errors)
    parse({"rules": {"window_s": 90, "thresholds": {"spo2": {"delay_s": 45}}}})


def test_check_config_warns_about_secret_files_others_can_read(tmp_path: Path):
    secret = tmp_path / "mqtt.password"
    secret.write_text("s3cret\n")
    f = tmp_path / "v.yaml"
    f.write_text(f"mqtt:\n  username: vitalmon\n  password_file: {secret}\n")
    secret.chmod(0o644)
    loose = check_config(f)
    assert loose.returncode == 0
    assert "warning: mqtt.password_file:" in loose.stderr and "0644" in loose.stderr
    assert "s3cret" not in loose.stderr + loose.stdout
    secret.chmod(0o600)
    assert check_config(f).stderr == ""


def test_a_literal_password_is_refused_one_from_the_environment_is_not():
    with pytest.raises(ConfigError) as exc:
        parse({"mqtt": {"username": "u", "password": "hunter2"}}, env={})
    assert exc.value.errors == [
        "mqtt.password: never write the password in the file; use password_file, or "
        "password: ${MQTT_PASSWORD} from the environment"
    ]
    cfg = parse(
        {"mqtt": {"username": "u", "password": "${MQTT_PASSWORD}"}},
        env={"MQTT_PASSWORD": "hunter2"},
    )
    assert cfg.mqtt.password == "hunter2"
    assert "hunter2" not in repr(cfg)


# ------------------------------------------------------- the README's key table


README = Path(__file__).resolve().parent.parent / "README.md"

#: A key path: segments, with ``[]`` for a list item and ``<>`` for any dict key.
KeyPath = tuple[str, ...]


def _types(annotation: Any) -> list[Any]:
    """The alternatives of an annotation, without None and Annotated metadata."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        return [t for a in get_args(annotation) if a is not type(None) for t in _types(a)]
    return [annotation]


def _models(annotation: Any) -> list[type[BaseModel]]:
    found = _types(annotation)
    if all(isinstance(t, type) and issubclass(t, BaseModel) for t in found):
        return found
    return []


def model_keys(
    model: type[BaseModel], prefix: KeyPath = (), variant: str | None = None
) -> list[tuple[KeyPath, str | None]]:
    """Every leaf key of the configuration model -> (path, list-item type or None)."""
    out: list[tuple[KeyPath, str | None]] = []
    for name, field in model.model_fields.items():
        path = (*prefix, field.alias or name)  # (the key as written: smtp's `from`)
        nested: list[tuple[KeyPath, str | None]] = []
        for t in _types(field.annotation):
            if isinstance(t, type) and issubclass(t, BaseModel):
                nested += model_keys(t, path, variant)
            elif get_origin(t) is list and (items := _models(get_args(t)[0])):
                for item in items:
                    typed = "type" in item.model_fields  # (alerts.routes[] has no type)
                    tag = get_args(item.model_fields["type"].annotation)[0] if typed else None
                    nested += model_keys(item, (*path, "[]"), tag if len(items) > 1 else None)
            elif get_origin(t) is dict and (values := _models(get_args(t)[1])):
                for value in values:
                    nested += model_keys(value, (*path, "<>"), variant)
        out += nested or [(path, variant)]
    return out


def _split(key: str) -> KeyPath:
    parts: list[str] = []
    for seg in key.split("."):
        if seg.endswith("[]"):
            parts += [seg[:-2], "[]"]
        else:
            parts.append("<>" if "<" in seg else seg)
    return tuple(parts)


def readme_keys() -> list[tuple[KeyPath, str | None, set[str]]]:
    """The README's configuration table -> per key: (path, list-item type or None, the
    names in backticks in its row). ``.name`` in a row is a key of the row's first key's
    section; ``X[].type: T`` documents the items of type T (and their ``type``)."""
    text = README.read_text(encoding="utf-8")
    start = text.index("| key | default | meaning |")
    rows = text[start:].split("\n\n", 1)[0].splitlines()[2:]
    out = []
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", " ".join(re.findall(r"`([^`]+)`", row))))
        section: KeyPath = ()
        for i, cell_key in enumerate(re.findall(r"`([^`]+)`", cells[0])):
            key, variant = cell_key, None
            if m := re.fullmatch(r"(.+)\.type: (\S+)", cell_key):
                key, variant = m.group(1), m.group(2)
            path = (*section, *_split(key[1:])) if key.startswith(".") else _split(key)
            if i == 0:
                section = path[:-1]
            out.append((path, variant, names | {"type"} if variant else names))
    return out


def test_readme_key_table_is_the_configuration_model():
    """Every key of the model is in the README's table (as a row, or named in the row of
    the section or list item it belongs to), and every key of the table exists."""
    model = model_keys(Config)
    readme = readme_keys()

    def documented(path: KeyPath, variant: str | None) -> bool:
        for key, v, names in readme:
            if v not in (None, variant):
                continue
            if path[: len(key)] == key and all(s in names for s in path[len(key) :] if s != "<>"):
                return True
            if key[: len(path)] == path:  # the row names entries of a mapping
                return True
        return False

    def exists(key: KeyPath, variant: str | None) -> bool:
        return any(
            (path[: len(key)] == key or key[: len(path)] == path) and variant in (None, v)
            for path, v in model
        )

    missing = sorted(
        ".".join(p) + (f" ({v})" if v else "") for p, v in model if not documented(p, v)
    )
    unknown = sorted(".".join(k) for k, v, _ in readme if not exists(k, v))
    assert (missing, unknown) == ([], [])
    assert len(model) > 150  # the walk reached into sources, store, rules and profiles

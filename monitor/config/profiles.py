"""Limits per kind of patient (``profiles``) and the beds expected (``beds``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError

from monitor.config.base import VitalKey, _Model, is_ward_bed, overlay
from monitor.config.paths import join, loc
from monitor.config.rules import RulesConfig, ThresholdConfig

#: Built-in profiles: overrides of ``rules.thresholds`` (which is the ``adult`` profile).
#: A ``profiles.<name>`` in the config is merged over these, per vital and key.
BUILTIN_PROFILES: dict[str, dict[str, Any]] = {
    # adult: the limits of rules.thresholds as they are
    "adult": {},
    # COPD with confirmed hypercapnic respiratory failure (BTS 2017 oxygen guideline):
    # target SpO2 88-92 %, so alarm only below 88 (crit below 84, NEWS2 scale 2 scores
    # <= 83 as 3), and NEWS2 SpO2 scale 2 (over-oxygenation on O2 is scored, not alarmed).
    "copd": {
        "thresholds": {"spo2": {"low": {"warn": 88, "crit": 84}}},
        "news2_scale": 2,
    },
    # Post-operative patients on opioids (PCA, epidural): opioid-induced respiratory
    # depression shows as slowing breathing and rising EtCO2 before SpO2 falls, the
    # more so on oxygen (APSF 2011 / Joint Commission 2012: continuous oximetry and
    # capnography). Tighter RR low limits, SpO2 warning at 92 %, and EtCO2 limits:
    # hypoventilation (> 50 / > 60 mmHg) and apnoea or disconnection (< 5 mmHg for 20 s).
    "opioid": {
        "thresholds": {
            "rr": {"low": {"warn": 10, "crit": 8}},
            "spo2": {"low": {"warn": 92, "crit": 88}},
            "etco2": {
                "low": {"crit": 5},
                "high": {"warn": 50, "crit": 60},
                "delay_s": 20,
                "clear_band": 2,
            },
        },
    },
}


class ProfileConfig(_Model):
    """A named set of limits for a kind of patient, mounted at ``profiles.<name>``::

        profiles:
          copd:
            thresholds:
              spo2: {low: {warn: 87, crit: 84}}   # replaces copd's spo2.low
          cardiac:                              # a new profile
            thresholds:
              hr: {low: {warn: 45, crit: 35}}

    ``thresholds`` override ``rules.thresholds`` per vital and key, exactly as
    ``rules.thresholds`` overrides the defaults (``null`` switches a vital off).
    """

    thresholds: dict[VitalKey, dict[str, Any] | None] = Field(default_factory=dict)
    #: NEWS2 SpO2 scale of beds with this profile (null: ``rules.news2.scale``).
    news2_scale: Literal[1, 2] | None = None


@dataclass(frozen=True)
class Profile:
    """A profile resolved against ``rules``: the limits its beds are evaluated with."""

    name: str
    thresholds: dict[str, ThresholdConfig]
    news2_scale: Literal[1, 2]


def _bed_key(v: str) -> str:
    if not is_ward_bed(v):
        raise ValueError("a bed key is ward/bed, e.g. icu/7")
    return v


#: ``ward/bed``: a bad one is an error at its own key path, the other beds still checked.
BedKey = Annotated[str, AfterValidator(_bed_key)]


class BedConfig(_Model):
    #: Limits profile of the bed: ``adult``, ``copd``, ``opioid`` or one under ``profiles``.
    profile: str = "adult"


def resolve(
    rules: RulesConfig, given: Mapping[str, ProfileConfig]
) -> tuple[dict[str, Profile], list[str]]:
    """Every profile's effective limits (``rules.thresholds`` <- built-in <- ``given``);
    -> (profiles, errors with their key paths)."""
    out: dict[str, Profile] = {}
    errors: list[str] = []
    base = {v: tc.model_dump(exclude_unset=False) for v, tc in rules.thresholds.items()}
    for name in sorted(set(BUILTIN_PROFILES) | set(given)):
        builtin = BUILTIN_PROFILES.get(name, {})
        mine = given.get(name)
        merged = overlay(base, builtin.get("thresholds", {}))
        if mine is not None:
            merged = overlay(merged, mine.thresholds)
        thresholds: dict[str, ThresholdConfig] = {}
        for vital, data in merged.items():
            try:
                thresholds[vital] = ThresholdConfig.model_validate(data)
            except ValidationError as exc:
                for err in exc.errors():
                    where = join(f"profiles.{name}.thresholds.{vital}", loc(err["loc"]))
                    where = where.removesuffix(".<root>")
                    errors.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        longest = max((t.delay_s for t in thresholds.values() if t.enabled), default=0.0)
        if longest + rules.max_gap_s > rules.window_s:
            errors.append(
                f"profiles.{name}.thresholds: rules.window_s ({rules.window_s:g}) must "
                f"cover the longest delay_s ({longest:g}) plus rules.max_gap_s "
                f"({rules.max_gap_s:g})"
            )
        scale = mine.news2_scale if mine and mine.news2_scale else None
        scale = scale or builtin.get("news2_scale") or rules.news2.scale
        out[name] = Profile(name, thresholds, scale)
    return out, errors

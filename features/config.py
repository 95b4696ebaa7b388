"""The feature config: horizons, windows and the event vocabulary the features are built with.

Typed and validated (an unknown key or a bad value raises :class:`recsys.errors.ConfigError`
naming it), loaded from a YAML file over the defaults, which are the built-in behaviour::

    horizon_days: 365          # how far back the windowed features look ("days since" caps)
    windows: [30, 90, 365]     # the windows of the windowed counts (must include 30, 90, 365)
    lifetime_days: 3650        # how far back the lifetime purchase features look
    event_types:               # interaction event types each feature role reads
      view: [page_view, view, product_view, my_custom_view]
      nps: [nps, survey]
    rfm: {recency_days: [30, 90, 180, 365], ...}

A role given in ``event_types`` replaces that role's default list; other roles keep theirs.

The features of a process are defined once, from one config (:func:`active_config`): the one
given to :func:`configure` (the command line's ``--config``) before the feature definitions
are first imported, else the file named by the setting ``features_config``
(``RECSYS_FEATURES_CONFIG``), else the defaults. The config is part of the feature spec version,
so stores, training sets and models built with another config are refused, never mixed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from recsys.errors import ConfigError

#: Feature roles -> the event types read by default (common names across tools, and every
#: event type the demo generator writes).
DEFAULT_EVENT_TYPES: dict[str, tuple[str, ...]] = {
    "view": ("page_view", "view", "product_view", "pageview", "screen_view", "item_view"),
    "click": ("click", "link_click", "product_click", "banner_click"),
    "cart": ("add_to_cart", "cart_add", "addtocart", "add_cart", "basket_add"),
    "visit": ("app_open", "store_visit", "visit", "session_start", "login"),
    "contact": ("chat", "call", "chat_message", "phone_call", "contact"),
    "email_open": ("email_open", "open", "email_click"),
    "complaint": ("complaint",),
    "ticket": ("support_ticket", "ticket", "support"),
    "review": ("review", "rating"),
    "nps": ("nps", "nps_answer", "nps_response", "nps_survey", "survey", "survey_answer"),
}
#: Windows the fixed features read (trends over 30 and 90 days, the 365-day features).
REQUIRED_WINDOWS = (30, 90, 365)


class RfmThresholds(BaseModel):
    """Fixed thresholds of the RFM scores (1-5; no fitting on the data).

    ``recency_days``: days since the last purchase at or under each threshold score 5, 4, 3, 2
    (else 1); ``frequency`` / ``monetary``: 365-day purchases / spend at or over each threshold
    score 2, 3, 4, 5 (else 1).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    recency_days: tuple[float, float, float, float] = (30, 90, 180, 365)
    frequency: tuple[float, float, float, float] = (1, 3, 6, 12)
    monetary: tuple[float, float, float, float] = (1, 100, 500, 2000)

    @model_validator(mode="after")
    def _increasing(self) -> RfmThresholds:
        named = {"recency_days": self.recency_days, "frequency": self.frequency,
                 "monetary": self.monetary}  # fmt: skip
        for name, values in named.items():
            if list(values) != sorted(set(values)):
                raise ValueError(f"`rfm.{name}` must be strictly increasing, got {list(values)}")
        return self


class FeatureConfig(BaseModel):
    """What the feature definitions are built with (defaults: the built-in behaviour)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    horizon_days: int = Field(default=365, ge=365)
    windows: tuple[int, ...] = REQUIRED_WINDOWS
    lifetime_days: int = Field(default=3650, ge=1)
    event_types: dict[str, tuple[str, ...]] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_TYPES)
    )
    rfm: RfmThresholds = RfmThresholds()

    @model_validator(mode="before")
    @classmethod
    def _merge_event_types(cls, data: Any) -> Any:
        """A role given replaces its default list; other roles keep theirs."""
        if isinstance(data, dict) and isinstance(data.get("event_types"), dict):
            unknown = sorted(set(data["event_types"]) - set(DEFAULT_EVENT_TYPES))
            if unknown:
                raise ValueError(
                    f"`event_types` roles must be among {sorted(DEFAULT_EVENT_TYPES)}, "
                    f"got unknown {unknown}"
                )
            data = {**data, "event_types": {**DEFAULT_EVENT_TYPES, **data["event_types"]}}
        return data

    @model_validator(mode="after")
    def _check(self) -> FeatureConfig:
        windows = sorted(set(self.windows))
        if list(self.windows) != windows or windows[0] < 1:
            raise ValueError(
                f"`windows` must be distinct days >= 1 in increasing order, got {list(self.windows)}"
            )
        missing = [w for w in REQUIRED_WINDOWS if w not in windows]
        if missing:
            raise ValueError(f"`windows` must include {list(REQUIRED_WINDOWS)}, got {windows}")
        if windows[-1] > self.horizon_days:
            raise ValueError(
                f"`windows` must be <= horizon_days ({self.horizon_days}), got {windows[-1]}"
            )
        if self.lifetime_days < self.horizon_days:
            raise ValueError(
                f"`lifetime_days` must be >= horizon_days ({self.horizon_days}), "
                f"got {self.lifetime_days}"
            )
        for role, names in self.event_types.items():
            if not names or any(not isinstance(n, str) or not n for n in names):
                raise ValueError(
                    f"`event_types.{role}` must be a non-empty list of event type names, "
                    f"got {list(names)}"
                )
        return self

    def events(self, *roles: str) -> tuple[str, ...]:
        """The event types of ``roles``, in order, each once."""
        return tuple(dict.fromkeys(n for r in roles for n in self.event_types[r]))

    @property
    def used_event_types(self) -> frozenset[str]:
        """Every event type some feature reads by its type."""
        return frozenset(n for names in self.event_types.values() for n in names)


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown features config key `{key}`")
        else:
            message = err["msg"].removeprefix("Value error, ")
            where = f"`{key}` " if key != "<root>" else ""
            lines.append(
                f"{where}{message}" + ("" if key == "<root>" else f", got {err['input']!r}")
            )
    return "; ".join(lines)


def build_feature_config(tree: dict[str, Any] | None = None) -> FeatureConfig:
    """The defaults with ``tree``'s keys.

    Raises
    ------
    ConfigError
        An unknown key or a bad value; the message names it.
    """
    if tree is not None and not isinstance(tree, dict):
        raise ConfigError(
            f"the features config must be a mapping of keys, got {type(tree).__name__}"
        )
    try:
        return FeatureConfig.model_validate(tree or {})
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def load_feature_config(path: str | Path | None) -> FeatureConfig:
    """A YAML features config over the defaults (None: the defaults)."""
    if path is None:
        return build_feature_config()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"features config file {str(path)!r} does not exist")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"features config {str(path)!r} is not valid YAML: {exc}") from None
    try:
        return build_feature_config(tree)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


_ACTIVE: list[FeatureConfig] = []  # the process's config, once chosen


def configure(config: FeatureConfig | str | Path | None) -> FeatureConfig:
    """Choose the process's features config (a config, a YAML path, or None: the setting
    ``features_config``, else the defaults). Must come before the features are defined.

    Raises
    ------
    ConfigError
        The features were already defined with another config.
    """
    chosen = config if isinstance(config, FeatureConfig) else _from_file_or_settings(config)
    if _ACTIVE and _ACTIVE[0] != chosen:
        if "features.definitions.base" in sys.modules:
            raise ConfigError(
                "the features config must be chosen before the features are defined; this "
                "process already defined them with another config (start a new process)"
            )
        _ACTIVE.clear()
    if not _ACTIVE:
        _ACTIVE.append(chosen)
    return chosen


def active_config() -> FeatureConfig:
    """The process's features config (chosen by :func:`configure`, else from the settings)."""
    if not _ACTIVE:
        configure(None)
    return _ACTIVE[0]


def _from_file_or_settings(path: str | Path | None) -> FeatureConfig:
    if path is None:
        from recsys.settings import load_settings

        path = load_settings().features_config
    return load_feature_config(path)

"""The ``eventbus`` Dask config namespace: defaults, typed settings, validation.

The defaults live in ``eventbus.yaml`` beside this module and are merged into
Dask's config at import (:func:`merge_defaults`), so yaml files,
``dask.config.set`` and ``DASK_EVENTBUS__*`` environment variables all work
the usual Dask way. :func:`load_settings` turns the merged config into typed
:class:`Settings`, raising :class:`ConfigError` naming the key, the bad value
and what is allowed.

In the publisher process (``$EVENTBUS_PUBLISHER_PROCESS`` set) nothing is
merged and neither Dask nor yaml is imported: it only receives typed settings,
and must start cheaply.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, TypeVar

import msgspec

DEFAULTS_FILE = os.path.join(os.path.dirname(__file__), "eventbus.yaml")
PUBLISHER_PROCESS_ENV = "EVENTBUS_PUBLISHER_PROCESS"
"""Set in the publisher process's environment (not ``DASK_*``: Dask would read it)."""

_defaults: dict[str, Any] | None = None
_merged = False


def defaults() -> dict[str, Any]:
    """The defaults from ``eventbus.yaml``: ``{"eventbus": {...}}``."""
    global _defaults
    if _defaults is None:
        import yaml

        with open(DEFAULTS_FILE) as f:
            _defaults = yaml.safe_load(f)
    return _defaults


def merge_defaults() -> None:
    """Make the defaults part of Dask's config (once per process)."""
    global _merged
    if not _merged:
        import dask.config

        dask.config.update_defaults(defaults())
        _merged = True


def __getattr__(name: str) -> Any:
    if name == "DEFAULTS":  # the old module constant, loaded on first use
        return defaults()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ConfigError(ValueError):
    """An ``eventbus`` config value is invalid; the message says which and why."""


class Duration(float):
    """Seconds, given in config as a number or a Dask duration string ("50ms")."""


class PositiveDuration(Duration):
    """A :class:`Duration` greater than 0: every timeout, interval and backoff."""


class ByteSize(int):
    """Bytes, given in config as a number or a Dask size string ("1GiB", "64MiB")."""


_Struct = TypeVar("_Struct", bound=msgspec.Struct)

_Positive = Annotated[int, msgspec.Meta(ge=1)]
_NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class _Section(msgspec.Struct, kw_only=True, rename="kebab", forbid_unknown_fields=True):
    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({redact_value('', msgspec.to_builtins(self, enc_hook=float))})"
        )


class EventSettings(_Section):
    include: list[str] = msgspec.field(default_factory=lambda: ["*"])
    exclude: list[str] = msgspec.field(default_factory=list)
    include_tracebacks: bool = True
    max_text_length: Annotated[int, msgspec.Meta(ge=16)] = 10000
    max_graph_keys: _NonNegative = 100
    max_event_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 900_000
    graph_structure: bool = True
    max_graph_tasks: _NonNegative = 200_000
    worker_metrics_interval: Duration = Duration(5.0)


class TransitionSettings(_Section):
    include: list[str] = msgspec.field(default_factory=lambda: ["*"])
    exclude: list[str] = msgspec.field(default_factory=list)


class QueueSettings(_Section):
    max_events: _Positive = 100000
    overflow: Literal["drop-oldest", "drop-newest"] = "drop-oldest"
    batch_size: _Positive = 1000
    flush_interval: PositiveDuration = PositiveDuration(0.05)

    def __post_init__(self) -> None:
        if self.batch_size > self.max_events:
            raise ValueError(
                f"batch-size ({self.batch_size}) must not exceed max-events ({self.max_events})"
            )


class RetrySettings(_Section):
    initial_backoff: PositiveDuration = PositiveDuration(0.1)
    max_backoff: PositiveDuration = PositiveDuration(10.0)

    def __post_init__(self) -> None:
        if self.max_backoff < self.initial_backoff:
            raise ValueError(
                f"max-backoff ({self.max_backoff}s) must be at least "
                f"initial-backoff ({self.initial_backoff}s)"
            )


class PipelineSettings(_Section):
    mode: Literal["auto", "thread", "process"] = "auto"


MIN_SEGMENT_BYTES = 1 << 20


class SpoolSettings(_Section):
    path: str | None = None
    max_bytes: ByteSize = ByteSize(1 << 30)
    segment_bytes: ByteSize = ByteSize(64 << 20)
    sync_interval: PositiveDuration = PositiveDuration(1.0)

    def __post_init__(self) -> None:
        if self.path == "":
            raise ValueError("path must be a directory, or null for no spool")
        if self.segment_bytes < MIN_SEGMENT_BYTES:
            raise ValueError(f"segment-bytes ({self.segment_bytes}) must be at least 1MiB")
        if self.max_bytes < 2 * self.segment_bytes:
            raise ValueError(
                f"max-bytes ({self.max_bytes}) must be at least twice "
                f"segment-bytes ({self.segment_bytes})"
            )


class Settings(_Section):
    """Every ``eventbus.*`` setting except the backend options, typed."""

    backend: str = "jsonl"
    source: str | None = None
    events: EventSettings = msgspec.field(default_factory=EventSettings)
    transitions: TransitionSettings = msgspec.field(default_factory=TransitionSettings)
    queue: QueueSettings = msgspec.field(default_factory=QueueSettings)
    pipeline: PipelineSettings = msgspec.field(default_factory=PipelineSettings)
    retry: RetrySettings = msgspec.field(default_factory=RetrySettings)
    spool: SpoolSettings = msgspec.field(default_factory=SpoolSettings)
    close_timeout: Duration = Duration(10.0)
    backends: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.backend:
            raise ValueError("backend must name a backend, e.g. 'jsonl'")


def _decode_custom(type_: type, value: Any) -> Any:
    if type_ is Duration or type_ is PositiveDuration:
        if isinstance(value, bool):
            raise ValueError(f"expected a duration like '50ms' or '10s', got {value!r}")
        if isinstance(value, (int, float)) and value < 0:
            raise ValueError(f"a duration must not be negative, got {value!r}")
        try:
            seconds = type_(_seconds(value))
        except (ValueError, TypeError, KeyError):
            raise ValueError(
                f"expected a duration like '50ms', '10s' or a number of seconds, got {value!r}"
            ) from None
        if type_ is PositiveDuration and seconds <= 0:
            raise ValueError(f"must be greater than 0, got {value!r}")
        return seconds
    if type_ is ByteSize:
        return ByteSize(_bytes(value))
    raise NotImplementedError(type_)


def _bytes(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(
            f"expected a size like '1GiB', '64MiB' or a number of bytes, got {value!r}"
        )
    if isinstance(value, (int, float)):
        size = int(value)
    else:
        from dask.utils import parse_bytes

        try:
            size = parse_bytes(value)
        except (ValueError, TypeError):
            raise ValueError(
                f"expected a size like '1GiB', '64MiB' or a number of bytes, got {value!r}"
            ) from None
    if size <= 0:
        raise ValueError(f"must be greater than 0, got {value!r}")
    return size


def _seconds(value: Any) -> float:
    if isinstance(value, (int, float)):
        # As parse_timedelta returns it: the publisher process, which receives
        # numbers only, need not import Dask.
        return value
    from dask.utils import parse_timedelta

    seconds: float = parse_timedelta(value, default="seconds")
    return seconds


@functools.cache
def _struct_fields(type_: type[msgspec.Struct]) -> dict[str, msgspec.inspect.Field]:
    # Once per class: inspecting one evaluates its annotations, three quarters
    # of the time it takes to make a plugin.
    info = msgspec.inspect.type_info(type_)
    assert isinstance(info, msgspec.inspect.StructType)
    return {f.encode_name: f for f in info.fields}


def _kebab_keys(value: Any, type_: Any) -> Any:
    """Accept ``max_events`` for ``max-events`` in struct fields only.

    Dask config treats ``-`` and ``_`` alike, and ``DASK_*`` environment
    variables produce underscores. Free-form mappings (librdkafka settings,
    transport options) keep their keys untouched.
    """
    if not (isinstance(value, Mapping) and isinstance(type_, type)):
        return value
    if not issubclass(type_, msgspec.Struct):
        return value
    fields = _struct_fields(type_)
    out = {}
    for key, item in value.items():
        name = key.replace("_", "-") if isinstance(key, str) else key
        field = fields.get(name)
        if field is None:
            out[key] = item
            continue
        target = field.type
        if isinstance(target, msgspec.inspect.StructType):
            item = _kebab_keys(item, target.cls)
        out[name] = item
    return out


# Patterns, not compiled ones: the re module compiles (and keeps) each where it
# is first used, which a publisher process that meets no error never does.
_AT_PATH = r" - at `\$(?P<path>[^`]*)`$"


def convert(
    value: Any, type_: type[_Struct], where: str, what: str = "event bus config"
) -> _Struct:
    """Validate ``value`` into ``type_``; errors name ``where`` plus the bad key.

    ``where`` is the dotted config path of ``value``, e.g. ``eventbus`` or
    ``eventbus.backends.redis`` (or "" for keywords); ``what`` says what
    ``value`` is, for the error.
    """
    if value is None:
        value = {}
    try:
        return msgspec.convert(
            _kebab_keys(value, type_), type_, strict=False, dec_hook=_decode_custom
        )
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = re.search(_AT_PATH, message)
        path = match.group("path") if match else ""
        reason = re.sub(_AT_PATH, "", message)
        key = (where + path).lstrip(".")
        bad = _lookup(value, path) if path else _MISSING
        shown = "" if bad is _MISSING else f" = {redact_value(key, bad)!r}"
        if reason.startswith("Object contains unknown field"):
            reason += f"; known: {', '.join(_field_names(type_, path))}"
        raise ConfigError(f"Invalid {what}{' ' + key if key else ''}{shown}: {reason}") from None


_MISSING = object()


def _field_names(type_: type, path: str) -> list[str]:
    """The option names of the struct at ``path`` inside ``type_``."""
    info: Any = msgspec.inspect.type_info(type_)
    for name in re.findall(r"\.([^.\[]+)", path):
        field = next((f for f in info.fields if f.encode_name == name), None)
        info = field.type if field is not None else None
        while isinstance(info, msgspec.inspect.UnionType):  # an optional section
            info = next(t for t in info.types if not isinstance(t, msgspec.inspect.NoneType))
        if not isinstance(info, msgspec.inspect.StructType):
            return []
    return sorted(f.encode_name for f in info.fields)


def _lookup(value: Any, path: str) -> Any:
    for part in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        name, index = part
        try:
            if name:
                if name not in value:
                    name = name.replace("-", "_")
                value = value[name]
            else:
                value = value[int(index)]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return value


def load_settings(overrides: Mapping[str, Any] | None = None) -> Settings:
    """The current ``eventbus`` config, with ``overrides`` merged on top.

    The shipped defaults lie underneath, also when something replaced Dask's
    config wholesale after they were merged (as distributed's test suite does).
    """
    import dask.config

    merge_defaults()
    config = dask.config.get("eventbus", default={}) or {}
    config = dask.config.merge(defaults()["eventbus"], config, dict(overrides or {}))
    return convert(config, Settings, "eventbus")


_SECRET_KEY = (
    r"password|passphrase|passwd|secret|token|credential|private|key\.pem|oauthbearer"
    # Every extra HTTP header's value (Authorization, API keys) is a secret.
    r"|authorization|(?:^|\.)headers\."
)
# Greedy up to the authority's last "@": a password may contain "@" itself.
_URL_PASSWORD = r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^/\s]*@"
_QUERY_SECRET = r"(?P<name>[?&;](?:password|passwd|pass|pwd|token|secret|sasl_password)=)[^&;\s#]*"


def redact_url(text: str) -> str:
    """``amqp://user:secret@host/?password=x`` becomes ``amqp://user:***@host/?password=***``."""
    text = re.sub(_URL_PASSWORD, r"\g<scheme>\g<user>:***@", text)
    return re.sub(_QUERY_SECRET, r"\g<name>***", text, flags=re.IGNORECASE)


def secret_values(key: str, value: Any) -> set[str]:
    """The secrets ``value`` holds, judged by its key and shape as in
    :func:`redact_value`, plus passwords in URLs (``;``-separated too)."""
    if isinstance(value, Mapping):
        return set().union(*(secret_values(f"{key}.{k}", v) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return set().union(*(secret_values(key, v) for v in value))
    if re.search(_SECRET_KEY, key.lower()) and value not in (None, ""):
        # An Authorization header's credential follows its scheme ("Bearer"):
        # a client's error may quote the credential alone.
        return {str(value), str(value).rsplit(" ", 1)[-1]}
    found = set()
    if isinstance(value, str) and "://" in value:
        from urllib.parse import unquote, urlsplit

        for url in value.split(";"):
            with contextlib.suppress(ValueError):
                parts = urlsplit(url.strip())
                if parts.password and parts.password != parts.username:
                    found.update({parts.password, unquote(parts.password)})
    return found


def mask_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with passwords in URLs and query strings, and every one of
    ``secrets`` (see :func:`secret_values`), shown as ``***``.

    Secrets shorter than 4 characters are left to the URL patterns: replacing
    them everywhere would mangle the rest of the text.
    """
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "***")
    return redact_url(text)


def redact_value(key: str, value: Any) -> Any:
    """``value`` with any secret it holds masked, judged by its key and shape."""
    if isinstance(value, Mapping):
        return {k: redact_value(f"{key}.{k}", v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(key, v) for v in value]
    if re.search(_SECRET_KEY, key.lower()) and value not in (None, ""):
        return "***"
    if isinstance(value, str):
        return redact_url(value)
    return value


if not os.environ.get(PUBLISHER_PROCESS_ENV):
    merge_defaults()

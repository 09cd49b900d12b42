"""Every setting of the server, declared once.

Each setting has a name, a default, a validator and a one-line doc. The server's
constructor, the ``swoolish serve`` options (their flag, value type, metavar and help)
and the settings reference in ``docs/settings.md`` are all derived from this table, so
they cannot disagree (gunicorn's ``config.py`` habit).

Settings are validated in the master *before anything is forked*: a bad value is a
:class:`SettingError` whose message says what is wrong and how to fix it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import SettingError
from .proxy import TrustedPeers

__all__ = [
    "CLIENT_CERT_MODES",
    "KINDS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "SETTINGS",
    "Setting",
    "Settings",
    "normalize_origin",
    "render_reference",
    "settings_from_environ",
    "unknown_environ_names",
]

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")
CLIENT_CERT_MODES = ("none", "optional", "required")


def _comma_list(text: str) -> list[str]:
    """``a, b,c`` on the command line: the items of a ``list`` setting.

    An empty item (``,``, ``a,,b``, ``a,`` or the empty text) is a SettingError, not
    dropped: ``--reload-dir ,`` had become no directory at all, and --reload then
    watched the app's directory in silence."""
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        problem = "has an empty item" if text.strip() else "is empty"
        raise SettingError(
            f"{text!r} {problem}; write a comma-separated list without empty items, such as a,b"
        )
    return items


#: How the command line spells each kind of value: the function that turns the text
#: into a value (the validator still checks it afterwards) and the default metavar.
#: A ``bool`` takes no value: it is a ``--name`` / ``--no-name`` pair.
KINDS: dict[str, tuple[Callable[[str], Any] | None, str]] = {
    "int": (int, "N"),
    "seconds": (float, "SECONDS"),
    "str": (str, "TEXT"),
    "path": (str, "PATH"),
    "bool": (None, ""),
    "list": (_comma_list, "LIST"),
}


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingError(f"{name} must be a positive integer, got {value!r}")
    if value < 1:
        raise SettingError(f"{name} must be >= 1, got {value}")
    return value


#: Worker processes of one kind (event workers, task workers) per CPU at most.
PROCESSES_PER_CPU = 1000


def _process_limit() -> int:
    return PROCESSES_PER_CPU * (os.cpu_count() or 1)


def _worker_count(name: str, value: Any) -> int:
    """Event workers: >= 1, and at most PROCESSES_PER_CPU per CPU. A count no machine
    runs is a setting error at start, one line and exit status 2, where the master
    went on forking until the system gave out (``--task-workers 10000000``)."""
    return _at_most_processes(name, _positive_int(name, value))


def _task_worker_count(name: str, value: Any) -> int:
    """Task workers: >= 0, and at most PROCESSES_PER_CPU per CPU (see _worker_count)."""
    return _at_most_processes(name, _non_negative_int(name, value))


def _at_most_processes(name: str, value: int) -> int:
    limit = _process_limit()
    if value > limit:
        raise SettingError(
            f"{name} must be at most {limit} ({PROCESSES_PER_CPU} per CPU of this "
            f"machine's {os.cpu_count() or 1}), got {value}"
        )
    return value


def _non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SettingError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def _non_negative_number(name: str, value: Any) -> float:
    """Seconds >= 0 (NaN refused as in _positive_number), and finite."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise SettingError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return _finite(name, value)


def _positive_number(name: str, value: Any) -> float:
    """Seconds > 0. ``not value > 0`` rather than ``value <= 0``: NaN compares false
    both ways, and a NaN max_wait_time made every stopping worker skip worker_stop and
    worker_exit (a timer of NaN seconds cannot be armed), a NaN worker_start_timeout
    never expired (docs/cli.md, "Environment variables"). Finite too (_finite)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingError(f"{name} must be a number of seconds, got {value!r}")
    if not value > 0:
        raise SettingError(f"{name} must be > 0 seconds, got {value}")
    return _finite(name, value)


def _finite(name: str, value: int | float) -> float:
    """Refuse infinite seconds: ``inf`` is a valid float, so ``--max-wait-time inf`` or
    ``SWOOLISH_HANDSHAKE_TIMEOUT=inf`` passed the checks above and quietly meant
    "never" (a stopping worker never given up on, a silent client never timed out),
    where the reader of the setting expects a bound. An int past the largest float
    (from the app's code) is refused as such, not an OverflowError's traceback."""
    try:
        seconds = float(value)
    except OverflowError:
        raise SettingError(
            f"{name} must be a finite number of seconds, got an integer past the largest float"
        ) from None
    if not math.isfinite(seconds):
        raise SettingError(f"{name} must be a finite number of seconds, got {value}")
    return seconds


def _port(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise SettingError(f"{name} must be an integer between 0 and 65535, got {value!r}")
    return value


def _host(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise SettingError(f"{name} must be an address such as 127.0.0.1 or ::1, got {value!r}")
    return value


def _log_level(name: str, value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
        raise SettingError(f"{name} must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return value.lower()


def _choice(choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    """A validator accepting one of ``choices`` (any case), returned in lower case."""

    def validate(name: str, value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise SettingError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value.lower()

    return validate


def _optional_port(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise SettingError(
            f"{name} must be an integer between 1 and 65535 (None: off), got {value!r}"
        )
    return value


def _string_list(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        raise SettingError(f"{name} must be a list of strings, got {value!r}")
    if not all(isinstance(item, str) and item for item in value):
        raise SettingError(f"{name} must be a list of non-empty strings, got {value!r}")
    return tuple(value)


def _trusted_peers(name: str, value: Any) -> tuple[str, ...]:
    """A list of strings that each name peers: checked now, so a typo stops the start."""
    entries = _string_list(name, value)
    TrustedPeers(entries)
    return entries


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_CLUSTER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _redis_url(name: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.startswith(_REDIS_SCHEMES):
        raise SettingError(
            f"{name} must be a Redis URL such as redis://127.0.0.1:6379/0 (also rediss:// "
            f"and unix://), got {value!r}"
        )
    return value


def _cluster_name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _CLUSTER_NAME.fullmatch(value):
        raise SettingError(
            f"{name} must be 1 to 64 letters, digits, '_', '.' or '-', got {value!r}"
        )
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SettingError(f"{name} must be true or false, got {value!r}")
    return value


# An origin as browsers send it (RFC 6454 §6.2): scheme "://" host [":" port], no path.
_ORIGIN = re.compile(r"([a-z][a-z0-9+.-]*)://([^\s/?#@:\[\]]+|\[[0-9a-f:.]+\])(?::(\d{1,5}))?")
_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def normalize_origin(text: str) -> str | None:
    """``scheme://host[:port]`` in lower case without a default port, or None if
    ``text`` is no such origin (so ``HTTPS://Example.com:443`` equals
    ``https://example.com``, as RFC 6454 §5 compares them)."""
    match = _ORIGIN.fullmatch(text.lower()) if isinstance(text, str) else None
    if match is None:
        return None
    scheme, host, port = match.groups()
    if port is None or int(port) == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    if int(port) > 65535:
        return None
    return f"{scheme}://{host}:{int(port)}"


def _origins(name: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        raise SettingError(
            f"{name} must be a list of origins such as ['https://example.com'] "
            f"(None allows every origin), got {value!r}"
        )
    origins: list[str] = []
    for item in value:
        origin = normalize_origin(item)
        if origin is None:
            raise SettingError(
                f"{name}: {item!r} is no origin; write scheme://host[:port], such as "
                "https://example.com or http://localhost:8080"
            )
        if origin not in origins:
            origins.append(origin)
    if not origins:
        raise SettingError(f"{name} must list at least one origin (None allows every origin)")
    return tuple(origins)


def _optional_path(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SettingError(f"{name} must be a file path, got {value!r}")
    return value


ENV_PREFIX = "SWOOLISH_"
_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One declared setting: the single source of its default, validation, doc and CLI flag.

    The CLI fields may be left out: ``cli`` becomes ``--`` + the name with ``-`` for
    ``_``, ``kind`` follows the default's type, ``metavar`` follows the kind. Declare
    them only where that guess is wrong or a better word helps the reader.
    """

    name: str
    default: Any
    validate: Callable[[str, Any], Any]
    doc: str
    cli: str = ""  # the `swoolish serve` flag that overrides it
    kind: str = ""  # a key of KINDS: how the flag's value is parsed
    metavar: str = ""  # the flag's value in --help and docs/cli.md (none for a bool)
    choices: tuple[str, ...] = ()  # the only values the flag accepts, if limited

    def __post_init__(self) -> None:
        kind = self.kind or _kind_of(self.name, self.default)
        if kind not in KINDS:
            raise ValueError(f"setting {self.name}: kind must be one of {', '.join(KINDS)}")
        # Frozen: fill in the derived fields once, at declaration time.
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "cli", self.cli or "--" + self.name.replace("_", "-"))
        object.__setattr__(self, "metavar", self.metavar or KINDS[kind][1])

    @property
    def flags(self) -> tuple[str, ...]:
        """Every spelling of the flag: a bool also has its ``--no-`` form."""
        if self.kind == "bool":
            return (self.cli, "--no-" + self.cli[2:])
        return (self.cli,)

    @property
    def parse(self) -> Callable[[str], Any] | None:
        """Text on the command line to a value for the validator; None for a bool."""
        return KINDS[self.kind][0]

    @property
    def default_text(self) -> str:
        """The default as ``--help`` and docs/cli.md show it."""
        if self.default is None:
            return "none"
        if isinstance(self.default, tuple):
            return ",".join(self.default) or "none"
        return str(self.default)

    @property
    def env(self) -> str:
        """The environment variable that sets it: ``SWOOLISH_`` + the name in capitals."""
        return ENV_PREFIX + self.name.upper()

    def from_text(self, text: str) -> Any:
        """A value given as text (environment variable) for the validator; a ``bool`` is
        true/false, 1/0, yes/no or on/off."""
        if self.kind != "bool":
            parse = self.parse
            assert parse is not None
            return parse(text)
        word = text.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        raise SettingError(f"{self.env} must be true or false, got {text!r}")


def _kind_of(name: str, default: Any) -> str:
    """The kind a default implies; a ``None`` default says nothing, so it must be declared."""
    for python_type, kind in ((bool, "bool"), (int, "int"), (float, "seconds"), (str, "str")):
        if isinstance(default, python_type):
            return kind
    raise ValueError(f"setting {name}: declare its kind, the default {default!r} does not say")


SETTINGS: tuple[Setting, ...] = (
    Setting("host", "127.0.0.1", _host, "Address to listen on.", "--host", metavar="HOST"),
    Setting(
        "port",
        9501,
        _port,
        "TCP port to listen on (0 picks a free one).",
        "--port",
        metavar="PORT",
    ),
    Setting(
        "worker_num",
        1,
        _worker_count,
        "Number of worker processes (at most 1000 per CPU).",
        "--workers",
    ),
    Setting(
        "max_wait_time",
        3.0,
        _positive_number,
        "Seconds a stopping worker gives in-flight handlers before it exits.",
        "--max-wait-time",
    ),
    Setting(
        "worker_start_timeout",
        10.0,
        _positive_number,
        "Seconds a new worker has to import the app and finish worker_start.",
    ),
    Setting(
        "gc_freeze",
        True,
        _bool,
        "After worker_start, leave every object alive then out of later garbage "
        "collections (gc.freeze), so that full collections walk only what came after.",
    ),
    Setting(
        "memory_trim",
        16 * 1024 * 1024,
        _non_negative_int,
        "Once a worker's resident size grew by this many bytes and as much lies free in "
        "the C allocator (after large messages), give it back to the system "
        "(malloc_trim, glibc only); looked at every 10 s. 0: never.",
        metavar="BYTES",
    ),
    Setting(
        "reload_handoff",
        True,
        _bool,
        "On reload, move open WebSockets to the new worker instead of closing them 1012.",
    ),
    Setting(
        "reload_batch_size",
        0,
        _non_negative_int,
        "New workers booted at once during a reload (0: all of them).",
    ),
    Setting(
        "max_message_size",
        1024 * 1024,
        _positive_int,
        "Largest WebSocket message accepted, in bytes; larger ones close with 1009.",
        metavar="BYTES",
    ),
    Setting(
        "max_request_size",
        1024 * 1024,
        _positive_int,
        "Largest HTTP request body accepted, in bytes; larger ones get 413.",
        metavar="BYTES",
    ),
    Setting(
        "handshake_timeout",
        10.0,
        _positive_number,
        "Seconds a client has to complete its HTTP request or WebSocket handshake.",
    ),
    Setting(
        "keepalive_timeout",
        5.0,
        _positive_number,
        "Seconds an idle HTTP keep-alive connection is kept open.",
    ),
    Setting(
        "buffer_output_size",
        2 * 1024 * 1024,
        _positive_int,
        "Bytes that may wait unsent for one client: past a quarter of it the connection "
        "stops reading; past it push() returns False, and a WebSocket that must still "
        "answer is closed with 1008 (HTTP: reset).",
        metavar="BYTES",
    ),
    Setting(
        "heartbeat_check_interval",
        15.0,
        _non_negative_number,
        "Seconds between a worker's checks of idle connections (0: no checks, no pings).",
    ),
    Setting(
        "heartbeat_idle_time",
        60.0,
        _positive_number,
        "Seconds a WebSocket may send nothing, not even a pong, before it is closed with "
        "1001; it is pinged after half of it. An HTTP client that takes nothing of its "
        "answers for that long is reset.",
    ),
    Setting(
        "websocket_origins",
        None,
        _origins,
        "Origins (scheme://host[:port]) allowed to open a WebSocket; others, and a "
        "handshake without an Origin, get 403 before the handshake handler runs. None "
        "allows every origin. On the command line: a comma-separated list.",
        kind="list",
        metavar="ORIGINS",
    ),
    Setting(
        "max_connections",
        10000,
        _positive_int,
        "Connections one worker serves at once; more are refused with 503.",
    ),
    Setting(
        "websocket_compression",
        True,
        _bool,
        "Offer permessage-deflate (RFC 7692) to clients that ask for it.",
    ),
    Setting(
        "websocket_compression_threshold",
        512,
        _non_negative_int,
        "On a connection with permessage-deflate, messages shorter than this many bytes "
        "are sent uncompressed (RSV1 clear, RFC 7692 §6): deflate saves little on them and "
        "costs the most CPU per byte. 0 compresses every message.",
        metavar="BYTES",
    ),
    Setting(
        "websocket_compression_context_takeover",
        False,
        _bool,
        "Keep the server's compression context from message to message: a zlib "
        "compressor per connection (up to about 256 KiB each) for a better ratio on "
        "repetitive streams. Off: answer with server_no_context_takeover and compress "
        "each message as a stream of its own with one compressor per worker.",
    ),
    Setting(
        "pid_file",
        None,
        _optional_path,
        "File the master writes its pid to (removed when it exits).",
        "--pid-file",
        kind="path",
    ),
    Setting(
        "log_level",
        "info",
        _log_level,
        "Logging threshold.",
        "--log-level",
        metavar="LEVEL",
        choices=LOG_LEVELS,
    ),
    Setting(
        "log_format",
        "text",
        _choice(LOG_FORMATS),
        "Text lines, or one JSON object per line with time, level, pid, logger, message.",
        metavar="FORMAT",
        choices=LOG_FORMATS,
    ),
    Setting(
        "log_config",
        None,
        _optional_path,
        "A logging configuration file: a .json dictConfig, or an .ini fileConfig file. "
        "Applied instead of the default set-up (log_level and log_format then do not apply).",
        kind="path",
    ),
    Setting(
        "access_log",
        False,
        _bool,
        "Log one line per HTTP request and per WebSocket open and close (logger swoolish.access).",
    ),
    Setting(
        "uds",
        None,
        _optional_path,
        "Listen on this Unix domain socket instead of host and port (for a proxy in front).",
        kind="path",
    ),
    Setting(
        "proxy_headers",
        False,
        _bool,
        "Take the client's address from X-Forwarded-For / X-Forwarded-Proto (or "
        "Forwarded) when the peer is one of forwarded_allow_ips.",
    ),
    Setting(
        "forwarded_allow_ips",
        ("127.0.0.1", "::1"),
        _trusted_peers,
        "Peers trusted to send proxy headers: addresses or networks (10.0.0.0/8), "
        "'unix' for a Unix socket peer, '*' for any. On the command line: a "
        "comma-separated list.",
        kind="list",
        metavar="IPS",
    ),
    Setting(
        "ssl_cert_file",
        None,
        _optional_path,
        "PEM certificate chain: serve TLS (wss://, https://). Read again by each new "
        "worker, so a reload picks up a renewed certificate.",
        "--ssl-certfile",
        kind="path",
    ),
    Setting(
        "ssl_key_file",
        None,
        _optional_path,
        "PEM private key of ssl_cert_file (None: the key is in the certificate file).",
        "--ssl-keyfile",
        kind="path",
    ),
    Setting(
        "ssl_ca_file",
        None,
        _optional_path,
        "PEM CA bundle that client certificates are verified against.",
        "--ssl-ca-certs",
        kind="path",
    ),
    Setting(
        "ssl_client_cert",
        "none",
        _choice(CLIENT_CERT_MODES),
        "Whether clients must present a certificate signed by ssl_ca_file.",
        metavar="MODE",
        choices=CLIENT_CERT_MODES,
    ),
    Setting(
        "metrics_port",
        None,
        _optional_port,
        "Port on host where the master serves Prometheus metrics (/metrics) and "
        "/healthz (None: off).",
        kind="int",
        metavar="PORT",
    ),
    Setting(
        "task_worker_num",
        0,
        _task_worker_count,
        "Task worker processes next to the event workers, for server.task() and "
        "taskwait() (0: none; at most 1000 per CPU).",
        "--task-workers",
    ),
    Setting(
        "task_queue_size",
        1024,
        _positive_int,
        "Tasks one task worker may hold (running and queued); when every task worker is "
        "full, task() returns False and taskwait() raises.",
    ),
    Setting(
        "max_request",
        0,
        _non_negative_int,
        "Replace an event worker after it has handled this many HTTP requests and "
        "WebSocket messages, its open WebSockets handed to its successor (0: never).",
    ),
    Setting(
        "max_request_grace",
        0,
        _non_negative_int,
        "Up to this many more before the replacement, chosen at random per worker, so "
        "workers are not all replaced at once (gunicorn's max_requests_jitter).",
    ),
    Setting(
        "redis_url",
        None,
        _redis_url,
        "Cluster mode: the Redis (or Valkey) that several swoolish nodes share, such as "
        "redis://127.0.0.1:6379/0 (also rediss:// and unix://); push, exists, "
        "disconnect and broadcast then reach sessions of every node (None: one node).",
        kind="str",
        metavar="URL",
    ),
    Setting(
        "cluster_name",
        "swoolish",
        _cluster_name,
        "Cluster mode: the name of this cluster, so several can share one Redis.",
        metavar="NAME",
    ),
    Setting(
        "reload_on_change",
        False,
        _bool,
        "Development: watch the app's files and run a rolling reload when one changes "
        "(open WebSockets stay connected; a broken save is rolled back).",
        "--reload",
    ),
    Setting(
        "reload_dirs",
        (),
        _string_list,
        "Directories watched by --reload (default: the app's directory). On the command "
        "line: a comma-separated list.",
        "--reload-dir",
        kind="list",
        metavar="DIRS",
    ),
)

_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


class Settings:
    """The validated settings of one server, as attributes (``settings.worker_num``)."""

    __slots__ = tuple(_BY_NAME)

    if TYPE_CHECKING:
        # Every setting is an attribute, declared once in SETTINGS above.
        def __getattr__(self, name: str) -> Any: ...

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        for setting in SETTINGS:
            object.__setattr__(self, setting.name, setting.default)
        self.update(values or {})

    def update(self, values: Mapping[str, Any]) -> None:
        """Validate and apply ``values``; an unknown name lists the known ones."""
        for name, value in values.items():
            setting = _BY_NAME.get(name)
            if setting is None:
                known = ", ".join(sorted(_BY_NAME))
                raise SettingError(f"unknown setting {name!r}; known settings: {known}")
            object.__setattr__(self, name, setting.validate(name, value))

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _BY_NAME}

    def __setattr__(self, name: str, value: Any) -> None:
        self.update({name: value})

    def __repr__(self) -> str:
        return f"Settings({self.as_dict()!r})"


def settings_from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings given as ``SWOOLISH_<NAME>`` environment variables, validated.

    Precedence (docs/settings.md): the command line over the environment over the app's
    code over the default. A variable with a bad value is a :class:`SettingError` naming
    the variable. Variables that name no setting are left alone here; see
    :func:`unknown_environ_names`.
    """
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        text = environ.get(setting.env)
        if text is None:
            continue
        try:
            values[setting.name] = setting.validate(setting.name, setting.from_text(text))
        except (ValueError, SettingError) as exc:
            raise SettingError(f"{setting.env}={text!r}: {exc}") from None
    return values


def unknown_environ_names(environ: Mapping[str, str]) -> list[str]:
    """``SWOOLISH_`` variables that name no setting: almost always a typo, so the CLI
    warns about them instead of ignoring them in silence."""
    known = {s.env for s in SETTINGS} | _NOT_SETTINGS
    return sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)


#: ``SWOOLISH_`` variables that are no setting: test knobs (shared/ipc.py, loader.py,
#: tests/).
_NOT_SETTINGS = frozenset(
    {"SWOOLISH_CHANNEL_BUFFER", "SWOOLISH_IMPORT_WARNING_AFTER", "SWOOLISH_TIMEOUT_FACTOR"}
)


def render_reference() -> str:
    """The Markdown settings reference, generated so that docs never go stale."""
    lines = [
        "# Settings reference",
        "",
        "Generated from `swoolish/core/settings.py`; `tests/unit/test_settings.py` fails",
        "when this file is stale (regenerate with",
        "`python -m swoolish.core.settings > docs/settings.md`).",
        "",
        "Pass settings as keyword arguments: `WebSocketServer(host, port, worker_num=4)`",
        "or `server.set(worker_num=4)`. Every setting also has a `swoolish serve` option",
        "([cli.md](cli.md)) and an environment variable `SWOOLISH_<NAME>`",
        "(`SWOOLISH_WORKER_NUM=4`; a bool is `true`/`false`, `1`/`0`, `yes`/`no` or",
        "`on`/`off`; a list is comma-separated, and an empty item such as `a,,b` is",
        "refused).",
        "",
        "Precedence: **command line > environment > the app's code > default**. A bad value",
        "or an unknown `SWOOLISH_` variable stops the start with one line naming it.",
        "Settings take effect on a full restart, not on a reload (as in Swoole).",
        "",
        "| setting | default | CLI option | environment | meaning |",
        "|---|---|---|---|---|",
    ]
    for s in SETTINGS:
        flags = ", ".join(f"`{flag}`" for flag in s.flags)
        lines.append(f"| `{s.name}` | `{s.default!r}` | {flags} | `{s.env}` | {s.doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_reference(), end="")

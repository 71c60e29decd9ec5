"""Log lines that a remote party causes, bounded in size and in rate.

A remote party decides how often some lines are written (one per unparsable request, per
failed TLS handshake, per ``accept()`` that runs out of file descriptors) and often part of
what they say: aiohttp puts the bytes it could not parse into the exception it logs, with a
full traceback. Left alone, a client sending garbage makes the node write half a byte of log
per byte received, and a node out of file descriptors fills a disk in hours.

:class:`LogGuard` is a :class:`logging.Filter` that makes every line cost a bounded amount:

- the message (arguments applied) is cut to ``max_chars`` characters and control characters
  are escaped, so that one record is one line;
- the exception of a remote-caused error (any exception logged by the remote-facing loggers
  aiohttp.* and asyncio, and network, protocol, codec and authentication errors logged by
  anyone) becomes ``[ExcType: message]`` on the same line, without the traceback;
  other tracebacks (our own bugs) are kept, cut to ``max_traceback_chars``;
- each logger has a token bucket (``rate`` lines a second, bursts of ``burst``); lines beyond
  it are dropped and counted, and the next line that passes starts with
  ``suppressed N similar log lines;``.

It is pure apart from the clock, which is injected. :func:`install` puts one guard on the
remote-facing loggers and, optionally, on a handler (the ``gossip`` logger tree's).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

REMOTE_LOGGERS = ("aiohttp.server", "aiohttp.access", "aiohttp.web", "aiohttp.internal", "asyncio")
# Exceptions that say what a remote party did (or failed to do), not what our code got wrong.
# Matched by type and module name so that this module imports nothing heavy.
_REMOTE_TYPES: tuple[type[BaseException], ...] = (OSError, EOFError, UnicodeError)
_REMOTE_MODULES = ("aiohttp", "ssl", "gossip.codec", "peers.auth")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A quoted (maybe cut-off) string in an exception message: how aiohttp echoes what it got.
_QUOTED = re.compile(r"""b?'(?:[^'\\]|\\.?)*'?|b?"(?:[^"\\]|\\.?)*"?""")
_SEEN = "_log_guard_seen"


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text)} chars]"


def _one_line(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _bounded(text: str, limit: int) -> str:
    """``text`` on one line (control characters escaped), cut to ``limit`` characters."""
    head = _one_line(text[:limit])
    if len(text) <= limit and len(head) <= limit:
        return head
    return f"{head[:limit]}... [{len(text)} chars]"


def describe(exc: BaseException, limit: int = 120) -> str:
    """``ExcType: message`` on one line, quoted strings (echoed input) left out, cut."""
    try:
        text = str(exc)[: 4 * limit]
    except Exception:
        text = "(unprintable)"
    text = " ".join(_QUOTED.sub("'...'", text).split())
    return _bounded(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, limit)


def is_remote_error(exc: BaseException) -> bool:
    """Whether ``exc`` reports something a remote party did (then no traceback is kept)."""
    if isinstance(exc, _REMOTE_TYPES):
        return True
    module = type(exc).__module__
    return any(module == m or module.startswith(m + ".") for m in _REMOTE_MODULES)


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    suppressed: int = 0


class LogGuard(logging.Filter):
    """Cuts, flattens and rate-limits log records (see the module docstring)."""

    def __init__(
        self,
        *,
        rate: float = 10.0,
        burst: int = 10,
        max_chars: int = 300,
        max_exc_chars: int = 120,
        max_traceback_chars: int = 4000,
        remote_loggers: Iterable[str] = REMOTE_LOGGERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if rate <= 0 or burst < 1 or max_chars < 1:
            raise ValueError("rate must be > 0, burst and max_chars >= 1")
        self.rate = rate
        self.burst = burst
        self.max_chars = max_chars
        self.max_exc_chars = max_exc_chars
        self.max_traceback_chars = max_traceback_chars
        self.remote_loggers = tuple(remote_loggers)
        self.clock = clock
        self.suppressed_total = 0
        self._buckets: dict[str, _Bucket] = {}  # one per logger name: bounded by the code
        self._formatter = logging.Formatter()

    def is_remote_logger(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in self.remote_loggers)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SEEN, False):  # the same guard on a logger and a handler
            return True
        note = self._take(record.name)
        if note is None:
            return False
        setattr(record, _SEEN, True)
        self._shorten(record, note)
        return True

    def _take(self, name: str) -> str | None:
        """Charge one line to ``name``'s bucket: None to drop it, else a prefix (maybe '')."""
        now = self.clock()
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            bucket.suppressed += 1
            self.suppressed_total += 1
            return None
        bucket.tokens -= 1.0
        if not bucket.suppressed:
            return ""
        note = f"suppressed {bucket.suppressed} similar log lines; "
        bucket.suppressed = 0
        return note

    def _shorten(self, record: logging.LogRecord, note: str) -> None:
        try:
            message = record.getMessage()
        except Exception:  # bad format arguments: keep the template, never raise from logging
            message = f"{record.msg!s} (unformattable log arguments)"
        remote_logger = self.is_remote_logger(record.name)
        exc_info = record.exc_info
        exc = exc_info[1] if exc_info else None
        message = _bounded(message, self.max_chars)
        if exc is not None and (remote_logger or is_remote_error(exc)):
            message = f"{message} [{describe(exc, self.max_exc_chars)}]"
            record.exc_info = None
            record.exc_text = None
        elif exc_info and exc is not None:
            text = record.exc_text or self._formatter.formatException(exc_info)
            record.exc_text = _clip(text, self.max_traceback_chars)
        if record.stack_info:
            record.stack_info = None if remote_logger else _clip(record.stack_info, 2000)
        record.msg = note + message
        record.args = None


_installed: list[LogGuard] = []


def install(
    guard: LogGuard | None = None,
    handler: logging.Handler | None = None,
    loggers: Iterable[str] = REMOTE_LOGGERS,
) -> LogGuard:
    """Put ``guard`` (default: the one installed before, else a new one) on ``loggers`` and
    ``handler``, replacing any other LogGuard there. Idempotent; returns the guard."""
    if guard is None:
        guard = _installed[0] if _installed else LogGuard()
    _installed[:] = [guard]
    targets: list[logging.Filterer] = [logging.getLogger(name) for name in loggers]
    if handler is not None:
        targets.append(handler)
    for target in targets:
        for old in [f for f in target.filters if isinstance(f, LogGuard) and f is not guard]:
            target.removeFilter(old)
        target.addFilter(guard)
    return guard

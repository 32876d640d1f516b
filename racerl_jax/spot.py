"""What ends a training run early and cleanly: a spot instance's interruption notice, SIGTERM,
SIGINT and, on Windows, CTRL_BREAK and the console closing. All of them take the same path: the
training driver (``racerl_jax.train_loop.drive``) finishes the chunk it is in, writes an atomic
checkpoint and returns; the command then exits with ``EXIT_INTERRUPTED``, and running the same
command again resumes from that checkpoint.

The spot watcher polls the EC2 instance metadata service as AWS documents it (IMDSv2): a session
token from ``PUT /latest/api/token``, then every few seconds ``GET
/latest/meta-data/spot/instance-action`` (404 until AWS schedules the interruption, about two
minutes ahead) and ``GET /latest/meta-data/events/recommendations/rebalance`` (404 until AWS sees
an elevated risk of interruption). An interruption notice stops the run; a rebalance
recommendation only asks for a checkpoint now (it can come hours before an interruption or
never). Off AWS the first token request fails and the watcher turns itself off with one log line.
"""
from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import urllib.error
import urllib.request
from types import FrameType
from typing import Any, Callable

log = logging.getLogger(__name__)

# The exit status of a command stopped by a notice or a signal after its checkpoint was written:
# BSD's EX_TEMPFAIL ("temporary failure, try again"). A supervisor (the Task Scheduler job of
# deploy/windows, a shell loop, systemd) runs the same command again to resume; any other
# non-zero status is a real failure.
EXIT_INTERRUPTED = 75
# The driver's stop reasons that mean "interrupted from outside, checkpointed, resume me".
INTERRUPTED = ("signal", "spot")

DEFAULT_METADATA_URL = "http://169.254.169.254"
TOKEN_PATH = "/latest/api/token"
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
INSTANCE_ACTION_PATH = "/latest/meta-data/spot/instance-action"
REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
TOKEN_TTL_S = 21_600  # six hours, the most IMDSv2 grants; renewed on a 401 before then


def exit_code(stop_reason: str) -> int:
    """The command's exit status for the driver's stop reason: ``EXIT_INTERRUPTED`` after a notice
    or a signal, 0 when the run ended by its own budget."""
    return EXIT_INTERRUPTED if stop_reason in INTERRUPTED else 0


@dataclasses.dataclass(frozen=True)
class SpotConfig:
    """Where and how often to look for a spot interruption notice."""

    metadata_url: str = DEFAULT_METADATA_URL  # "" turns the watcher off
    poll_seconds: float = 5.0
    # The first request's timeout: how long a run off AWS spends finding out (in a thread).
    probe_timeout_s: float = 1.0

    def __post_init__(self) -> None:
        if self.metadata_url and not self.metadata_url.startswith(("http://", "https://")):
            raise ValueError(f"spot metadata URL {self.metadata_url!r}: expected http://HOST[:PORT] (the default "
                             f"{DEFAULT_METADATA_URL}), or '' to turn the watcher off")
        if not self.poll_seconds > 0 or not self.probe_timeout_s > 0:
            raise ValueError(f"spot poll_seconds and probe_timeout_s must be > 0, got {self.poll_seconds} and "
                             f"{self.probe_timeout_s}")


class SpotWatcher:
    """A daemon thread polling the metadata service; ``on_notice(text)`` is called once when an
    interruption is scheduled (then the thread ends), ``on_rebalance(text)`` once per new
    rebalance recommendation."""

    def __init__(self, config: SpotConfig, on_notice: Callable[[str], None],
                 on_rebalance: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.base = config.metadata_url.rstrip("/")
        self.on_notice = on_notice
        self.on_rebalance = on_rebalance
        self.active = False  # True while the service answers
        self.polls = 0
        self._token: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spot-watcher", daemon=True)

    def start(self) -> "SpotWatcher":
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _request(self, method: str, path: str, headers: dict[str, str], timeout: float) -> tuple[int, str]:
        req = urllib.request.Request(self.base + path, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, ""

    def _fetch_token(self, timeout: float) -> None:
        status, body = self._request("PUT", TOKEN_PATH, {TOKEN_TTL_HEADER: str(TOKEN_TTL_S)}, timeout)
        if status != 200 or not body:
            raise OSError(f"token request answered HTTP {status}")
        self._token = body.strip()

    def _get(self, path: str) -> str | None:
        """The body, or None on 404 (nothing scheduled). A 401 means the token expired: renewed once."""
        for _ in range(2):
            status, body = self._request("GET", path, {TOKEN_HEADER: self._token or ""}, self.config.probe_timeout_s * 2)
            if status == 401:
                self._fetch_token(self.config.probe_timeout_s * 2)
                continue
            if status == 404:
                return None
            if status == 200:
                return body
            raise OSError(f"GET {path} answered HTTP {status}")
        raise OSError(f"GET {path}: token refused twice")

    def _run(self) -> None:
        try:
            self._fetch_token(self.config.probe_timeout_s)
        except OSError as e:  # URLError, timeouts and refused connections are OSErrors
            log.info("spot watcher off: no instance metadata service at %s (%s; not on EC2?)", self.base,
                     getattr(e, "reason", e))
            return
        self.active = True
        log.info("spot watcher on: polling %s every %g s", self.base, self.config.poll_seconds)
        seen_rebalance: str | None = None
        warned = False
        while not self._stop.is_set():
            try:
                action = self._get(INSTANCE_ACTION_PATH)
                self.polls += 1
                if action is not None:
                    self.on_notice(f"spot interruption notice: {action.strip()}")
                    return
                rebalance = self._get(REBALANCE_PATH)
                if rebalance is not None and rebalance != seen_rebalance:
                    seen_rebalance = rebalance
                    if self.on_rebalance is not None:
                        self.on_rebalance(f"rebalance recommendation: {rebalance.strip()}")
                warned = False
            except OSError as e:  # once it has answered, a failure is taken as passing: keep polling
                if not warned:
                    log.warning("spot watcher: %s unreachable (%s); still polling", self.base, getattr(e, "reason", e))
                    warned = True
            self._stop.wait(self.config.poll_seconds)


def _stop_signals() -> list[int]:
    """SIGINT and SIGTERM, and on Windows SIGBREAK: the C runtime delivers CTRL_BREAK and the console
    closing (also logoff and shutdown) as SIGBREAK. Windows kills the process 5 s after a console
    close: enough for a checkpoint when the driver is between chunks, not always otherwise."""
    sigs = [signal.SIGINT, signal.SIGTERM]
    if hasattr(signal, "SIGBREAK"):
        sigs.append(signal.SIGBREAK)
    return sigs


class StopSignal:
    """Context manager: a signal or a spot interruption notice sets ``requested`` (and ``reason``)
    instead of killing the process, so the training driver finishes its chunk, checkpoints and
    returns; a rebalance recommendation sets a checkpoint request (``take_checkpoint_request``).
    A second SIGINT interrupts at once (a user who means it)."""

    def __init__(self, spot: SpotConfig | None = None) -> None:
        self.requested = False
        self.reason: str | None = None  # "signal" or "spot"
        self.detail = ""
        self.signum: int | None = None
        self.spot = spot
        self.watcher: SpotWatcher | None = None
        self._checkpoint = threading.Event()
        self._previous: dict[int, Any] = {}

    def request(self, reason: str, detail: str = "") -> None:
        if not self.requested:
            self.reason, self.detail = reason, detail
            self.requested = True
            log.warning("stopping: %s; checkpointing, then exiting with status %d (run the command again to resume)",
                        detail or reason, EXIT_INTERRUPTED)

    def take_checkpoint_request(self) -> bool:
        """True once after each rebalance recommendation."""
        if self._checkpoint.is_set():
            self._checkpoint.clear()
            return True
        return False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        self.request("signal", signal.Signals(signum).name)

    def _rebalance(self, text: str) -> None:
        log.warning("%s: checkpointing now", text)
        self._checkpoint.set()

    def __enter__(self) -> "StopSignal":
        # Signal handlers can only be installed from the main thread; elsewhere only the watcher stops the run.
        if threading.current_thread() is threading.main_thread():
            for sig in _stop_signals():
                self._previous[sig] = signal.signal(sig, self._handle)
        if self.spot is not None and self.spot.metadata_url:
            self.watcher = SpotWatcher(self.spot, lambda text: self.request("spot", text), self._rebalance).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

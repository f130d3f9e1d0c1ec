"""`lfv-edge greengrass`: the Run command of the `com.lfvedge.Inspector` Greengrass V2 component.

Owns the component's life: connect to the nucleus, read the configuration, load the model,
serve requests over IPC, report RUNNING, apply configuration updates live, and stop.

    start: IPC connect → GetConfiguration → parse_config → load the model → Service + IpcTransport
           → SubscribeToConfigurationUpdate / SubscribeToValidateConfigurationUpdates → RUNNING
    live:  one event per changed leaf → ~1 s of quiet → GetConfiguration → apply between messages
           (topics: resubscribe; capture sources: changed ones restart; threshold, colours, limits: a new Inspector sharing the runner;
           model path or device: a fresh Inspector, swapped in while the old one finishes what it
           prepared; image roots, queue size, masks: `Service.update_settings`)
    stop:  SIGTERM → stop receiving, answer everything received, exit 0
           IPC lost → exit 1 (the nucleus restarts us; there is no reconnect in the SDK)

Exit codes as `cli.main`: 2 bad configuration, 3 unusable model package, 1 anything else fatal.
Besides `service.py`'s workers, the one thread created here applies configuration updates, so
that neither IPC callbacks nor the request pipeline ever wait for a model to load.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, NoReturn

from lfv_edge.errors import ConfigError, LfvEdgeError, TransportError
from lfv_edge.service.config import ServiceConfig

if TYPE_CHECKING:  # the real imports happen in the handler: `lfv-edge --help` stays instant
    from lfv_edge.host import Companion
    from lfv_edge.service.core import Service
    from lfv_edge.transports.ipc import IpcComponentConfig, IpcConnection, IpcTransport

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FATAL = 1
DEBOUNCE_S = 1.0  # the nucleus sends one event per changed leaf: wait for the burst to end
_MAX_DEBOUNCE_S = 5.0  # … but apply a never-ending trickle of changes at least this often
# Short: the nucleus force-kills a component that does not stop in time (15 s is the default
# timeout of lifecycle steps such as Shutdown).
# What the component gives itself to stop when its configuration does not say (stopTimeoutS):
# the nucleus sends SIGKILL 5 s after SIGTERM (fixed: aws-greengrass-nucleus util/Exec.java,
# gracefulShutdownTimeout), and the process still has to exit after draining.
DRAIN_TIMEOUT_S = 4.0


def run_component(*, debounce_s: float, drain_timeout_s: float | None) -> NoReturn:
    """The component's Run step: serve until SIGTERM or a fatal error, then exit the process."""
    from lfv_edge.service.process import exit_now, install_logging, on_stop_signals
    from lfv_edge.transports.ipc import IpcComponentConfig, IpcConnection

    install_logging(logging.getLevelName(logging.getLogger().level), greengrass=True)
    environ = os.environ
    connection = IpcConnection.connect(environ)
    component = GreengrassComponent(
        connection,
        IpcComponentConfig(connection, environ),
        environ,
        debounce_s=debounce_s,
        drain_timeout_s=drain_timeout_s,
    )

    # Signals before start(): a SIGTERM while the model loads stops us as soon as we serve.
    with on_stop_signals(component.request_stop):
        try:
            component.start()
            code = component.wait()
        finally:
            component.close()
            connection.close()
    exit_now(code)  # everything is answered and closed


class GreengrassComponent:
    """Wires the IPC connection, the configuration, the inspector and the service."""

    def __init__(
        self,
        connection: IpcConnection,
        component_config: IpcComponentConfig,
        environ: Mapping[str, str] = os.environ,
        *,
        debounce_s: float = DEBOUNCE_S,
        drain_timeout_s: float | None = None,  # None: the configuration's stopTimeoutS
    ) -> None:
        self._connection = connection
        self._component_config = component_config
        self._environ = environ
        self._debounce_s = debounce_s
        self._drain_timeout_s = drain_timeout_s
        self._events: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._applier: threading.Thread | None = None
        self._config: ServiceConfig | None = None
        self._service: Service | None = None
        self._transport: IpcTransport | None = None
        self._companions: list[Companion] = []  # beside the service (host.py)
        self.applied = 0  # configuration updates applied (for logs and tests)

    # --- start ------------------------------------------------------------------------------

    def start(self) -> None:
        """Read the configuration, load the model, serve, watch the configuration, report RUNNING.

        Raises:
            ConfigError: invalid configuration (exit 2).
            ModelPackageError: the model cannot be used (exit 3).
            TransportError: a subscription was denied or the nucleus did not answer (exit 1).
        """
        from lfv_edge.host import build_companions, start_companions
        from lfv_edge.service.wiring import build_service, load_inspector
        from lfv_edge.transports.ipc import IpcTransport

        try:
            config = self._component_config.read()
            logging.getLogger().setLevel(config.log_level)
            self._connection.timeout_s = config.ipc.timeout_s if config.ipc else 10.0
            model = config.model
            assert model is not None, "to_service_config requires it"  # noqa: S101
            assert config.ipc is not None, "to_service_config requires it"  # noqa: S101
            inspector = load_inspector(model, config.limits, environ=self._environ)
            transport = IpcTransport(self._connection, config.ipc)
            service = build_service(config, inspector, [transport], self._environ)
            self._config, self._service, self._transport = config, service, transport
            self._component_config.watch(self._on_change)
            self._component_config.watch_validation(self._events.put)
            self._applier = threading.Thread(
                target=self._apply_loop, name="lfv-config", daemon=True
            )
            self._applier.start()
            # Built before the service starts: the web view's observer sees every reply.
            self._companions = build_companions(config, service, transport, self._environ)
            service.start()
            start_companions(self._companions)
            self._connection.update_state("RUNNING")
        except LfvEdgeError as exc:
            logger.error("cannot start: %s", exc)
            self._report_errored()
            if self._service is not None:
                self._service.stop(timeout_s=1.0)
            raise
        finally:
            self._started.set()

    def _report_errored(self) -> None:
        if self._connection.lost_reason is not None:
            return
        try:
            self._connection.update_state("ERRORED")
        except TransportError as exc:
            logger.warning("could not report ERRORED: %s", exc)

    # --- run and stop ----------------------------------------------------------------------------

    def request_stop(self, why: str) -> None:
        """Stop serving (drain) from any thread, signal handlers included: never blocks.

        Before `start()` has finished, the stop happens as soon as the service runs.
        """
        if self._stopping.is_set():
            return
        self._stopping.set()
        logger.info("%s: stopping after answering what was received", why)
        threading.Thread(target=self._stop_service, name="lfv-stop", daemon=True).start()

    def _stop_service(self) -> None:
        from lfv_edge.host import stop_companions

        self._started.wait()  # set by start(), whether it succeeded or not
        budget = self._stop_budget_s()
        started = time.monotonic()
        stop_companions(self._companions, budget / 4)
        if self._service is not None:
            self._service.stop(max(budget - (time.monotonic() - started), 0.5))

    def _stop_budget_s(self) -> float:
        if self._drain_timeout_s is not None:
            return self._drain_timeout_s
        return self._config.stop_timeout_s if self._config is not None else DRAIN_TIMEOUT_S

    def wait(self) -> int:
        """Block until the service stopped; EXIT_FATAL if a transport failure stopped it."""
        assert self._service is not None  # noqa: S101 - start() succeeded
        self._service.wait()
        self._stopping.set()
        if self._service.fatal_reason is not None:
            logger.error("exiting after a fatal error: %s", self._service.fatal_reason)
            self._report_errored()
            return EXIT_FATAL
        return EXIT_OK

    def close(self) -> None:
        """Stop the configuration thread and streams (the connection's owner closes it)."""
        self._stopping.set()
        self._events.put(_STOP)
        if self._applier is not None:
            self._applier.join(self._stop_budget_s())
        self._component_config.stop()

    # --- configuration updates -------------------------------------------------------------------

    def _on_change(self, key_path: tuple[str, ...]) -> None:
        self._events.put(_Changed(key_path))  # executor thread: enqueue only

    def _apply_loop(self) -> None:
        while True:
            item = self._events.get()
            if item is _STOP:
                return
            changed: set[tuple[str, ...]] = set()
            if isinstance(item, _Changed):
                changed.add(item.key_path)
            else:
                self._answer_validation(item)
                continue
            deadline = time.monotonic() + _MAX_DEBOUNCE_S
            while time.monotonic() < deadline:
                try:
                    item = self._events.get(timeout=self._debounce_s)
                except queue.Empty:
                    break
                if item is _STOP:
                    return
                if isinstance(item, _Changed):
                    changed.add(item.key_path)
                else:
                    self._answer_validation(item)
            if not self._stopping.is_set():
                self._reload(changed)

    def _answer_validation(self, item: object) -> None:
        from lfv_edge.transports.ipc import ValidationRequest

        if not isinstance(item, ValidationRequest):
            return
        problem = self.validate(item.configuration)
        if problem is None:
            logger.info("deployment %s: configuration accepted", item.deployment_id)
        else:
            logger.warning("deployment %s: configuration rejected: %s", item.deployment_id, problem)
        try:
            self._component_config.report_validity(item.deployment_id, problem)
        except TransportError as exc:
            logger.error("deployment %s: validity report not sent: %s", item.deployment_id, exc)

    def validate(self, candidate: Mapping[str, object]) -> str | None:
        """None if `candidate` would work, else why not (the message names the key path)."""
        from lfv_edge.model.package import read_model_package

        try:
            config = self._component_config.check(candidate)
        except ConfigError as exc:
            return str(exc)
        current = self._config.model if self._config else None
        model = config.model
        if model is not None and (current is None or model.path != current.path):
            try:
                read_model_package(model.path)  # pre-flight: manifest, stage files, ELF checks
            except LfvEdgeError as exc:
                return f"model.path: {exc}"
        return None

    def _reload(self, changed: set[tuple[str, ...]]) -> None:
        names = sorted("/".join(path) for path in changed)
        logger.info("configuration changed (%d keys: %s)", len(names), ", ".join(names[:10]))
        try:
            config = self._component_config.read()
        except ConfigError as exc:
            # Local deployments are not validated first: refuse here, keep what runs.
            logger.error("configuration refused, keeping the running one: %s", exc)
            return
        except TransportError as exc:
            logger.error("configuration not read: %s", exc)
            return
        self.apply(config)

    def apply(self, new: ServiceConfig) -> None:
        """Apply a parsed configuration between messages; what fails keeps its old value."""
        from lfv_edge.service.wiring import load_inspector, retune_inspector, service_settings

        old, service, transport = self._config, self._service, self._transport
        assert old is not None, "start() succeeded"  # noqa: S101
        assert old.model is not None, "to_service_config requires it"  # noqa: S101
        assert new.model is not None, "to_service_config requires it"  # noqa: S101
        assert service is not None, "start() succeeded"  # noqa: S101
        assert transport is not None, "start() succeeded"  # noqa: S101
        logging.getLogger().setLevel(new.log_level)
        effective = new
        model, old_model = new.model, old.model
        if (model.path, model.device) != (old_model.path, old_model.device):
            try:
                with service.model_reload():  # /readyz: not ready while the new model loads
                    service.replace_inspector(
                        load_inspector(model, new.limits, environ=self._environ)
                    )
            except LfvEdgeError as exc:
                logger.error("model.path %s not loaded, still serving %s: %s", model.path,
                             old_model.path, exc)  # fmt: skip
                model = dataclasses.replace(
                    model, path=old_model.path, device=old_model.device, threads=old_model.threads
                )
                effective = dataclasses.replace(effective, model=model)
        if (
            model.path == old_model.path
            and model.device == old_model.device
            and (
                (
                    model.threshold_override,
                    dict(model.colors),
                    model.lookout_vision_model_arn,
                    new.limits,
                )
                != (
                    old_model.threshold_override,
                    dict(old_model.colors),
                    old_model.lookout_vision_model_arn,
                    old.limits,
                )
            )
        ):
            # Same model: a new Inspector around the same runner is instant.
            try:
                service.replace_inspector(retune_inspector(service.inspector, model, new.limits))
            except LfvEdgeError as exc:
                logger.error("model settings not applied: %s", exc)
        if model.threads != old_model.threads:
            logger.warning("model.threads takes effect at the next start (TVM sizes its pool once)")
        if new.stats_interval_s != old.stats_interval_s:
            logger.warning("statsIntervalS takes effect at the next start")
        if new.http != old.http:
            logger.warning("http takes effect at the next start (the web view binds once)")
        settings = service_settings(new, self._environ)
        if settings != service.settings or new.queue.size != old.queue.size:
            service.update_settings(settings, queue_size=new.queue.size)
        if new.ipc is not None and new.ipc != old.ipc:
            try:
                transport.update(new.ipc)
            except TransportError as exc:
                logger.error("topics not changed: %s", exc)
            effective = dataclasses.replace(effective, ipc=transport.config)
        if (new.sources, new.capture, new.ipc) != (old.sources, old.capture, old.ipc):
            from lfv_edge.host import reconfigure_companions

            self._companions = reconfigure_companions(
                self._companions, effective, service, transport, self._environ
            )
        self._config = effective
        self.applied += 1
        logger.info("configuration applied (update %d)", self.applied)


@dataclasses.dataclass(frozen=True, slots=True)
class _Changed:
    key_path: tuple[str, ...]


_STOP = object()

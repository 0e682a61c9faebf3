"""``reconciler daemon``: every part assembled from the settings, run until stopped.

The one place that knows how the loops, the HTTP server (probes, metrics,
webhooks), leader election, logging, notifications and the backend fit
together; ``cli.py`` only parses flags.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from reconciler.adapters.clocks import SystemClock
from reconciler.adapters.local.locks import StateLock
from reconciler.adapters.local.secrets import SecretStore
from reconciler.app.api import RunsApi, User
from reconciler.app.cli_common import make_syncer, report_outcome
from reconciler.app.daemon import Daemon, LoopOptions
from reconciler.app.health import DaemonServer, Health
from reconciler.app.logs import JsonFormatter, configure_logging
from reconciler.app.metrics import PrometheusRecorder
from reconciler.app.notifying import Notifier, check_targets
from reconciler.app.reporting import ReportingOptions, StatusReporter
from reconciler.app.running import Executor, ExecutorOptions
from reconciler.app.scheduling import Scheduler
from reconciler.app.settings import Settings, SettingsError
from reconciler.app.syncing import SyncOutcome
from reconciler.app.webhooks import Webhooks, WebhookSecrets
from reconciler.app.wiring import (
    build_clock,
    build_elector,
    build_runner,
    build_status_writer,
    build_store,
    start_watching,
    status_enabled,
)
from reconciler.core.notifications import previous_outcome
from reconciler.core.redaction import LiveRedactor, Redactor
from reconciler.core.repoconfigs import RepoConfig
from reconciler.core.runs import Run
from reconciler.core.slots import CatchUpPolicy
from reconciler.ports import ReconcilerError, RunBackend, StepRunner

log = logging.getLogger(__name__)


def all_secret_values(secrets: SecretStore) -> list[str]:
    """Every value in the local secret store: what logs and the status branch never show."""
    return [value for secret_id in secrets.list() for value in secrets.get(secret_id).values()]


def redactor(settings: Settings) -> Redactor:
    """Known secret values (the local store, read again when it changes: a secret set while
    the daemon runs is redacted at once; none on Kubernetes) and token shapes."""
    if settings.backend == "kubernetes":
        return Redactor()
    store = SecretStore(settings.state_dir)
    return LiveRedactor(lambda: all_secret_values(store), stamp=store.stamp)


def serve(settings: Settings, *, once: bool) -> int:
    """Run the daemon; the exit code."""
    redactor_ = redactor(settings)
    handler = configure_logging(
        level=settings.log_level, log_format=settings.log_format, redact=redactor_
    )
    as_json = isinstance(handler.formatter, JsonFormatter)
    lock = StateLock(settings.state_dir)
    if not once and not lock.acquire():
        raise click.ClickException(
            f"another daemon (pid {lock.holder()}) already uses the state directory "
            f"{settings.state_dir}; one daemon per state directory"
        )
    try:
        backend = build_store(settings)
    except (SettingsError, ReconcilerError) as exc:
        raise click.ClickException(str(exc)) from exc
    recorder = PrometheusRecorder(workflow_states=backend.workflow_states)
    syncer = make_syncer(settings, backend, recorder=recorder)
    clock = build_clock(settings)  # a warped one only for simulations and tests
    scheduler = executor = None
    runner = build_runner(settings)
    if not once:
        executor = Executor(
            backend,
            runner,
            clock=clock,
            options=ExecutorOptions(max_parallel=settings.max_parallel),
            recorder=recorder,
            on_run_finished=lambda run: on_run_finished(run),
        )
        scheduler = Scheduler(
            backend,
            clock=clock,
            policy=CatchUpPolicy(
                mode=settings.catch_up,
                starting_deadline=timedelta(seconds=settings.starting_deadline),
            ),
            on_created=executor.notify,
        )
    reporter = None
    if not once and status_enabled(settings):
        reporter = StatusReporter(
            backend,
            build_status_writer(settings, recorder=recorder),
            clock=clock,
            **_report_logs(settings, runner),
            options=ReportingOptions(
                keep_succeeded=settings.status_keep_succeeded,
                keep_failed=settings.status_keep_failed,
            ),
        )
    health = Health(clock.monotonic, stale_after=max(300.0, 5 * settings.interval))

    def on_run_finished(run: Run) -> None:
        if notifier is None:
            return
        history = backend.runs_of(run.key, limit=10, states=["succeeded", "failed"])
        tags = [str(t) for t in run.spec.get("tags") or ()]
        notifier.run_finished(run, tags=tags, previous=previous_outcome(run, history))

    notifier = _notifier(settings, clock, recorder, redactor_) if not once else None
    current: list[RepoConfig] = []  # the repository's config as last read: rules for the API

    def on_outcome(outcome: SyncOutcome) -> None:
        config = outcome.config
        if config is None and not current and outcome.revision:
            try:  # up to date at start: read only the repository's config
                config = syncer.loader.load_config(outcome.revision)
            except ReconcilerError as exc:
                log.warning("reading the repository's config failed: %s", exc)
        if config is not None:
            current[:] = [config]
            if notifier is not None:
                notifier.set_rules(config.notifications)
        if not as_json:
            report_outcome(outcome)  # colours for a person at a terminal
            return
        if outcome.result == "unchanged":
            log.debug("revision %s: up to date", (outcome.revision or "?")[:12])
            return
        summary = outcome.plan.summary() if outcome.plan else {}
        level = logging.INFO if outcome.ok else logging.WARNING
        log.log(
            level,
            "sync %s at revision %s%s",
            outcome.result,
            (outcome.revision or "?")[:12],
            f": {outcome.message}" if outcome.message else "",
            extra={"revision": outcome.revision, "summary": summary},
        )
        for error in outcome.errors:
            log.warning("manifest error: %s", error.render(), extra={"path": error.path})
        for key, message in outcome.failures.items():
            log.warning("apply failed: %s", message, extra={"workflow": key})

    loop = Daemon(
        syncer,
        options=LoopOptions(
            interval=settings.interval,
            jitter=settings.jitter,
            once=once,
            shutdown_grace=settings.shutdown_grace,
            status_flush_interval=settings.status_flush_interval,
            debounce=settings.poke_debounce,
            clock_rate=clock.rate,
        ),
        on_outcome=on_outcome,
        scheduler=scheduler,
        executor=executor,
        reporter=reporter,
        health=health,
        recorder=recorder,
    )
    loop.install_signal_handlers()
    server = None
    address = settings.serving_address(os.environ)
    if address and not once:
        api = _api(settings, backend, runner, clock, redactor_, executor, current)
        server = _server(settings, address, health, recorder, loop, api)
        server.start()
    elector = None
    try:
        if settings.backend == "kubernetes" and settings.leader_election and not once:
            elector = build_elector(settings)
            health.set_role("standby")
            recorder.set("leader", 0)
            log.info(
                "%s: standby until it holds the lease %s/%s",
                elector.identity,
                settings.kube_namespace,
                settings.lease_name,
            )
            if not elector.acquire(loop.stop_event):
                return 0  # stopped while waiting
            elector.keep_in_background(loop.stop_event, on_lost=loop.lose_leadership)
        health.set_role("leader")
        recorder.set("leader", 1)
        if not once and settings.backend == "kubernetes":
            start_watching(backend, runner)
        if settings.watch and settings.repo is not None:
            from reconciler.adapters.watching import watch_directory

            directory = Path(settings.repo) / settings.path
            watch_directory(directory, on_change=loop.poke, stop_event=loop.stop_event)
            log.info("watching %s for changes (Ctrl-C to stop)", directory)
        code = loop.run()
        health.set_role("stopping")
        if elector is not None and not elector.is_leader:
            recorder.set("leader", 0)
            log.error("lost the lease: exiting so a fresh start waits as a standby")
            code = 1
    except ReconcilerError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if elector is not None:
            elector.release()
        if server is not None:
            server.stop()
        if notifier is not None:
            notifier.close(timeout=10.0)  # what the last runs left, within reason
    return code


def _notifier(
    settings: Settings, clock: SystemClock, recorder: PrometheusRecorder, redact: Redactor
) -> Notifier | None:
    """Notifications of run results, when the settings name targets."""
    if not settings.notify_targets:
        return None
    for problem in check_targets(settings.notify_targets):
        log.warning("notification target: %s", problem)
    notifier = Notifier(settings.notify_targets, clock=clock, redact=redact)
    recorder.watch_notifier(notifier.counters)
    notifier.start()
    return notifier


def _api(
    settings: Settings,
    backend: RunBackend,
    runner: StepRunner,
    clock: SystemClock,
    redact: Redactor,
    executor: Executor | None,
    current: list[RepoConfig],
) -> RunsApi | None:
    """The run API, when the settings list users (each with a bearer token)."""
    users = []
    for user in settings.users:
        token = user.read_token()
        if token is None:
            log.warning("API user %s has no token (token or token_file): left out", user.name)
            continue
        users.append(User(user.name, token, frozenset(user.groups)))
    if not users:
        return None
    return RunsApi(
        backend,
        users=users,
        rules=lambda: current[0].access if current else (),
        read_log=runner.read_log,
        clock=clock,
        notify=executor.notify if executor is not None else (lambda: None),
        redact=redact,
    )


def _server(
    settings: Settings,
    address: str,
    health: Health,
    recorder: PrometheusRecorder,
    loop: Daemon,
    api: RunsApi | None,
) -> DaemonServer:
    try:
        secrets = WebhookSecrets(
            github=settings.secret("webhook_github_secret"),
            gitlab=settings.secret("webhook_gitlab_secret"),
            generic=settings.secret("webhook_token"),
        )
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    webhooks = Webhooks(
        secrets,
        branch=settings.branch,
        poke=loop.poke,
        count=lambda source, result: recorder.count("webhooks_total", source=source, result=result),
        max_body=settings.webhook_max_body,
    )
    try:
        return DaemonServer(address, health, recorder=recorder, webhooks=webhooks, api=api)
    except OSError as exc:
        raise click.ClickException(
            f"cannot serve HTTP on {address}: {exc}; set http_address to a free host:port, or 'off'"
        ) from exc


def _report_logs(settings: Settings, runner: StepRunner) -> dict[str, Any]:
    """Log tails for the status branch: only where secret values are known to redact them.

    The local backend knows every secret value (its store) and redacts them; on
    Kubernetes the daemon never reads a Secret, so it cannot redact a step that
    prints one: reports there carry no log tails (read them with `reconciler log`).
    """
    if settings.backend == "kubernetes":
        return {"read_log": _no_log, "secret_values": tuple}
    secrets = SecretStore(settings.state_dir)
    return {"read_log": runner.read_log, "secret_values": lambda: all_secret_values(secrets)}


def _no_log(workspace: str, run_id: str, step: str) -> bytes | None:
    return None

"""The `aitools-exporter` command: serve (default), snapshot, fit, check-config, receive, service."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path

import click

from exporter import __version__
from exporter.config import Config, ConfigError, load_config, parse_config

DEFAULT_LISTEN_ADDRESS = "127.0.0.1:8730"
LOG_LEVELS = ("debug", "info", "warn", "error")

log = logging.getLogger("exporter")


def _common_options(command):
    """Options every subcommand takes, also before the subcommand; each has an AITOOLS_<OPTION> variable."""
    options = [
        click.option("--config.file", "config_file", envvar="AITOOLS_CONFIG_FILE", default=None,
                     help="YAML configuration file; without it the built-in defaults apply."),
        click.option("--web.listen-address", "listen_address", envvar="AITOOLS_WEB_LISTEN_ADDRESS", default=None,
                     help=f"Address to serve on (default {DEFAULT_LISTEN_ADDRESS})."),
        click.option("--web.config.file", "web_config_file", envvar="AITOOLS_WEB_CONFIG_FILE", default=None,
                     help="TLS and basic auth, in the exporter-toolkit web config format."),
        click.option("--log.level", "log_level", envvar="AITOOLS_LOG_LEVEL", default=None,
                     type=click.Choice(LOG_LEVELS, case_sensitive=False), help="Log level (default info)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _max_requests_option(command):
    """serve's cap on requests in flight, as node_exporter's; also given before the subcommand."""
    return click.option("--web.max-requests", "max_requests", envvar="AITOOLS_WEB_MAX_REQUESTS", default=None,
                        type=click.IntRange(min=1),
                        help="Requests served at once; more are answered 503 at once (default 40).")(command)


def _replay_option(command):
    return click.option("--replay", "replay", envvar="AITOOLS_REPLAY", default=None,
                        type=click.Path(exists=True),
                        help="Run on a recording (`aitools-exporter record DIR`) instead of this machine: the same "
                             "collectors, with the recorded platform's logic.")(command)


def _config_for(settings: dict, replay: str | None) -> Config:
    """The configuration; with --replay, the recording becomes the machine the collectors read
    and its own configuration applies unless --config.file names another."""
    if replay is None:
        return _load(_config_file(settings.get("config_file")))
    from exporter.collectors.machine import Replay, use
    from exporter.recording import RecordingError, load

    try:
        recording = load(replay)
    except RecordingError as exc:
        click.echo(f"aitools-exporter: bad recording: {exc}", err=True)
        sys.exit(2)
    use(Replay(recording))
    if settings.get("config_file") or recording.config_text is None:
        return _load(settings.get("config_file"))
    try:
        return parse_config(recording.config_text, f"{replay} (the recording's configuration)")
    except ConfigError as exc:
        click.echo(f"aitools-exporter: bad configuration: {exc}", err=True)
        sys.exit(2)


def _settings(ctx: click.Context, **given) -> dict:
    """Options of this subcommand, falling back to those given before it."""
    merged = dict(ctx.obj or {})
    merged.update({key: value for key, value in given.items() if value is not None})
    return merged


def _setup_logging(level: str | None) -> None:
    name = (level or "info").upper()
    logging.basicConfig(level=logging.WARNING if name == "WARN" else getattr(logging, name),
                        format="%(asctime)s level=%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _config_file(given: str | None) -> str | None:
    """--config.file, else the default file (~/.config/aitools/exporter.yml) when it exists, else None
    (the built-in defaults)."""
    if given:
        return given
    from exporter.service import default_config_path

    default = default_config_path()
    return str(default) if default.is_file() else None


def _serve_until_stopped(server) -> None:
    """Wait for SIGINT or SIGTERM, then stop the server."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    log.info("stopping")
    server.shutdown()


def _load(config_file: str | None) -> Config:
    try:
        return load_config(config_file)
    except ConfigError as exc:
        click.echo(f"aitools-exporter: bad configuration: {exc}", err=True)
        sys.exit(2)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@_common_options
@_max_requests_option
@click.version_option(__version__, "--version", prog_name="aitools-exporter")
@click.pass_context
def main(ctx: click.Context, config_file, listen_address, web_config_file, log_level, max_requests=None):
    """Memory budgets of an AI developer workstation, as a Prometheus exporter."""
    ctx.obj = {key: value for key, value in
               dict(config_file=config_file, listen_address=listen_address, web_config_file=web_config_file,
                    log_level=log_level, max_requests=max_requests).items()
               if value is not None}
    if ctx.invoked_subcommand is None:
        ctx.invoke(serve)


@main.command()
@_common_options
@_max_requests_option
@_replay_option
@click.pass_context
def serve(ctx: click.Context, config_file=None, listen_address=None, web_config_file=None, log_level=None,
          max_requests=None, replay=None):
    """Serve /metrics, / and /healthz (the default command)."""
    from exporter.selfmetrics import raise_open_files_limit

    settings = _settings(ctx, config_file=config_file, listen_address=listen_address,
                         web_config_file=web_config_file, log_level=log_level, max_requests=max_requests)
    _setup_logging(settings.get("log_level"))
    raise_open_files_limit()  # after the logging: a refusal is logged
    if replay is None:
        settings["config_file"] = _config_file(settings.get("config_file"))
    config = _config_for(settings, replay)
    from exporter.app import Exporter
    from exporter.server import DEFAULT_MAX_REQUESTS, start_server
    from exporter.webconfig import WebConfigError, load_web_config

    web_config = None
    if settings.get("web_config_file"):
        try:
            web_config = load_web_config(settings["web_config_file"])
        except WebConfigError as exc:
            click.echo(f"aitools-exporter: bad web configuration: {exc}", err=True)
            sys.exit(2)
    exporter = Exporter(config, own_metrics=True)
    address = settings.get("listen_address") or DEFAULT_LISTEN_ADDRESS
    try:
        server = start_server(address, exporter, web_config, settings.get("max_requests") or DEFAULT_MAX_REQUESTS)
    except (OSError, ValueError) as exc:
        click.echo(f"aitools-exporter: cannot listen on {address}: {exc}", err=True)
        sys.exit(1)
    host, port = server.server_address[:2]
    scheme = "https" if web_config and web_config.ssl_context else "http"
    log.info("aitools-exporter %s serving %s://%s:%d/metrics (profile %s, config %s)%s", __version__, scheme,
             f"[{host}]" if ":" in host else host, port, config.profile, settings.get("config_file") or "built-in defaults",
             f", replaying {replay}" if replay else "")

    _serve_until_stopped(server)


@main.command()
@_common_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
@_replay_option
@click.pass_context
def snapshot(ctx: click.Context, as_json: bool, config_file=None, listen_address=None, web_config_file=None,
             log_level=None, replay=None):
    """Collect once and print where the memory goes (a tree), which installed models fit now, and every reading beside its budget."""
    settings = _settings(ctx, config_file=config_file, log_level=log_level)
    _setup_logging(settings.get("log_level") or "error")
    config = _config_for(settings, replay)
    from exporter.app import Exporter
    from exporter.snapshot import render_json, render_table, take_snapshot

    result = take_snapshot(Exporter(config))
    click.echo(json.dumps(render_json(config, result), indent=2) if as_json else render_table(config, result))


@main.command()
@_common_options
@click.argument("model")
@click.option("--server", type=click.Choice(("ollama", "lmstudio")), default=None,
              help="The server to look the model up in (default: Ollama, then LM Studio).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def fit(ctx: click.Context, model: str, server: str | None, as_json: bool, config_file=None, listen_address=None,
        web_config_file=None, log_level=None):
    """Whether MODEL fits now, its estimated loaded size and what it assumed, and the loaded models to
    unload first. Exit 0 fits now, 1 fits after the plan, 2 never fits, 3 unknown model or no data."""
    settings = _settings(ctx, config_file=config_file, log_level=log_level)
    _setup_logging(settings.get("log_level") or "error")
    config = _load(_config_file(settings.get("config_file")))
    from exporter.app import Exporter
    from exporter.snapshot import FIT_EXIT, find_fit, fit_json, render_fit, take_snapshot

    answer = find_fit(take_snapshot(Exporter(config), first=(model,)), model, server)
    click.echo(json.dumps(fit_json(answer), indent=2) if as_json else render_fit(answer))
    ctx.exit(FIT_EXIT[answer["outcome"]])


@main.command()
@_common_options
@click.option("--interval", type=click.FloatRange(0.5, 3600), default=2.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--url", default=None, help="Show a running exporter (http://host:8730) instead of this machine.")
@click.option("--username", default=None, help="Basic auth user of that exporter (--web.config.file).")
@click.option("--password-file", type=click.Path(dir_okay=False), default=None,
              help="A file holding that user's password.")
@click.option("--ca-file", type=click.Path(dir_okay=False), default=None,
              help="CA certificate to verify that exporter's TLS certificate with.")
@click.option("--alerts", "alert_urls", multiple=True,
              help="Alertmanager or Prometheus address for the firing alerts (default: tried on 127.0.0.1:9093, "
                   "then :9090).")
@click.option("--audit.file", "audit_file", envvar="AITOOLS_AUDIT_FILE", default=None,
              help="Audit log of the fixes (the receiver's).")
@click.pass_context
def top(ctx: click.Context, interval: float, url, username, password_file, ca_file, alert_urls, audit_file=None,
        config_file=None, listen_address=None, web_config_file=None, log_level=None):
    """A live view of where the memory goes, with the fixes the configuration enables one key away."""
    if not sys.stdout.isatty() or not sys.stdin.isatty():
        raise click.ClickException("top needs a terminal; for one reading in a script or a pipe use "
                                   "`aitools-exporter snapshot` (or `snapshot --json`)")
    settings = _settings(ctx, config_file=config_file, log_level=log_level)
    _setup_logging(settings.get("log_level") or "error")
    from textual.logging import TextualHandler

    logging.getLogger().handlers[:] = [TextualHandler()]  # log lines must not draw over the view
    config = _load(_config_file(settings.get("config_file")))
    from exporter.service import default_audit_path
    from exporter.top import DEFAULT_ALERT_URLS, AlertFeed, Fixer, LocalFeed, RemoteFeed, TopApp

    if url:
        password = None
        if password_file:
            try:
                password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise click.ClickException(f"cannot read --password-file: {exc}") from None
        tls = None
        if ca_file:
            import ssl

            try:
                tls = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise click.ClickException(f"cannot use --ca-file: {exc}") from None
        feed, fixer = RemoteFeed(url, config, username, password, tls), None
    else:
        feed = LocalFeed(config)
        fixer = Fixer(config, Path(audit_file) if audit_file else default_audit_path()) if config.actions.enabled else None
    alerts = AlertFeed(tuple(alert_urls) or DEFAULT_ALERT_URLS, min(config.timeout, 2.0))
    TopApp(feed, interval, alerts, fixer).run()


@main.command()
@_common_options
@click.argument("folder", type=click.Path(file_okay=False))
@click.pass_context
def record(ctx: click.Context, folder: str, config_file=None, listen_address=None, web_config_file=None,
           log_level=None):
    """Collect once and write everything the collectors read to FOLDER/recording.json, secrets
    redacted (README "Record and replay"); replay it anywhere with `snapshot --replay FOLDER`."""
    import platform
    from datetime import datetime, timezone

    settings = _settings(ctx, config_file=config_file, log_level=log_level)
    _setup_logging(settings.get("log_level") or "error")
    path = _config_file(settings.get("config_file"))
    config = _load(path)
    from exporter.app import Exporter
    from exporter.collectors.machine import Recorder, use
    from exporter.recording import save
    from exporter.snapshot import take_snapshot

    patterns = [app.cmdline for app in config.apps if app.cmdline is not None]
    patterns += [group.cmdline for group in config.process_groups if group.cmdline is not None]
    text = Path(path).read_text(encoding="utf-8", errors="replace") if path else None
    recorder = use(Recorder(patterns, text))
    take_snapshot(Exporter(config))
    recording = recorder.recording
    recording.machine = platform.platform(terse=True)
    recording.recorded = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        saved = save(recording, folder)
    except OSError as exc:
        click.echo(f"aitools-exporter: cannot write the recording: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{saved}: {len(recording.processes)} processes, {len(recording.commands)} commands, "
               f"{len(recording.http)} HTTP answers, {len(recording.files)} files ({recording.platform}); "
               f"replay it with: aitools-exporter snapshot --replay {folder}")


@main.command("check-config")
@_common_options
@click.pass_context
def check_config(ctx: click.Context, config_file=None, listen_address=None, web_config_file=None, log_level=None):
    """Validate the configuration file: exit 0, or name the bad key, line and reason and exit 2."""
    settings = _settings(ctx, config_file=config_file)
    path = _config_file(settings.get("config_file"))
    config = _load(path)
    click.echo(f"{path or 'built-in defaults'}: configuration is valid (profile {config.profile}, "
               f"{len(config.node.targets)} node targets, {len(config.process_groups)} process groups)")


@main.command()
@_common_options
@click.option("--audit.file", "audit_file", envvar="AITOOLS_AUDIT_FILE", default=None,
              help="Audit log of the fixes, one JSON line per decision (default: ~/Library/Logs/aitools/"
                   "receiver-audit.jsonl on macOS, ~/.local/state/aitools/receiver-audit.jsonl elsewhere).")
@click.pass_context
def receive(ctx: click.Context, audit_file=None, config_file=None, listen_address=None, web_config_file=None,
            log_level=None):
    """Alertmanager webhook receiver: desktop notifications and, where enabled, fixes (default 127.0.0.1:8731)."""

    from exporter.receiver import DEFAULT_RECEIVER_ADDRESS, Receiver, start_receiver
    from exporter.service import default_audit_path

    settings = _settings(ctx, config_file=config_file, listen_address=listen_address, log_level=log_level)
    _setup_logging(settings.get("log_level"))
    path = _config_file(settings.get("config_file"))
    config = _load(path)
    audit = Path(audit_file) if audit_file else default_audit_path()
    try:
        receiver = Receiver(config, audit)
    except ValueError as exc:
        click.echo(f"aitools-exporter: {exc}", err=True)
        sys.exit(2)
    # The receiver has its own port: the exporter's --web.listen-address given before `receive`
    # does not apply here, only one given after it.
    address = listen_address or DEFAULT_RECEIVER_ADDRESS
    web_config = None
    if web_config_file or ctx.obj.get("web_config_file"):  # TLS, as for serve
        from exporter.webconfig import WebConfigError, load_web_config

        try:
            web_config = load_web_config(web_config_file or ctx.obj["web_config_file"])
            if web_config.users:
                raise WebConfigError("basic_auth_users are for serve: the receiver checks the bearer token of "
                                     "receiver.token_file")
        except WebConfigError as exc:
            click.echo(f"aitools-exporter: bad web configuration: {exc}", err=True)
            sys.exit(2)
    try:
        server = start_receiver(address, receiver, web_config)
    except (OSError, ValueError) as exc:
        click.echo(f"aitools-exporter: cannot listen on {address}: {exc}", err=True)
        sys.exit(1)
    host, port = server.server_address[:2]
    if receiver.token is None:
        log.warning("no receiver.token_file: any local process may post alerts (fixes stay off without a token)")
    log.info("aitools-exporter %s receiving Alertmanager webhooks on %s://%s:%d/ (config %s; actions %s%s; "
             "audit log %s)", __version__, "https" if web_config and web_config.ssl_context else "http",
             f"[{host}]" if ":" in host else host, port, path or "built-in defaults",
             ", ".join(config.actions.enabled) or "none",
             " (dry run)" if config.actions.enabled and config.actions.dry_run else "", audit)
    _serve_until_stopped(server)


@main.group()
def service():
    """Run `serve` and `receive` as your background services (LaunchAgents on macOS, systemd user units on Linux)."""


def _say_or_exit(lines) -> None:
    """Print what a service step says, line by line; its failure on stderr, exit 1."""
    from exporter.service import ServiceError

    try:
        for line in lines():
            click.echo(line)
    except ServiceError as exc:
        click.echo(f"aitools-exporter: {exc}", err=True)
        sys.exit(1)


@service.command("install")
@click.option("--receive.listen-address", "receive_address", default=None,
              help="Address of the receiver service (default 127.0.0.1:8731; on Linux with Docker Engine the "
                   "docker0 address, e.g. 172.17.0.1:8731, so that Alertmanager in compose reaches it).")
def service_install(receive_address=None):
    """Install and start both services; creates ~/.config/aitools/exporter.yml and the receiver token when absent."""
    from exporter.service import install

    _say_or_exit(lambda: install(receive_address=receive_address))


@service.command("uninstall")
def service_uninstall():
    """Stop and remove both services (the configuration and the token stay)."""
    from exporter.service import uninstall

    _say_or_exit(uninstall)


@service.command("status")
def service_status():
    """Whether each service is installed, loaded and answering; exit 0 only when both answer."""
    from exporter.service import status

    lines, healthy = status()
    for line in lines:
        click.echo(line)
    sys.exit(0 if healthy else 3)


@main.command("notify")
@_common_options
@click.option("--test", "test", is_flag=True, help="Send one test notification and say whether it could be shown.")
@click.pass_context
def notify(ctx: click.Context, test: bool, config_file=None, listen_address=None, web_config_file=None, log_level=None):
    """Send one desktop notification through the receiver's path (`--test`); exit 0 only when it could be shown."""
    if not test:
        raise click.UsageError("give --test: aitools-exporter notify --test")
    from exporter.notify import Notifier
    from exporter.receiver import compose_notification, parse_payload

    settings = _settings(ctx, log_level=log_level)
    _setup_logging(settings.get("log_level") or "error")  # the result is said once, below
    # A webhook payload as Alertmanager sends it, read and worded by the receiver's own code.
    payload = parse_payload(json.dumps({
        "version": "4", "status": "firing", "groupKey": "aitools-notify-test",
        "groupLabels": {"alertname": "AitoolsNotificationTest"}, "commonLabels": {"severity": "info"},
        "commonAnnotations": {"summary": "aitools notifications reach this desktop"},
        "alerts": [{"status": "firing", "labels": {"alertname": "AitoolsNotificationTest", "severity": "info"},
                    "annotations": {"summary": "aitools notifications reach this desktop",
                                    "description": "Sent by `aitools-exporter notify --test`."}}],
    }).encode())
    notifier = Notifier()
    note = compose_notification(payload, [])
    argv = notifier.command(note)
    result, reason = notifier.send(note)
    if result == "ok":
        click.echo(f"shown: \"{note.title}\" posted by {argv[0] if argv else 'the notifier'}; nothing on this "
                   "machine says it is hidden. Did not see it? README, \"Notifications\".")
        sys.exit(0)
    click.echo(f"not shown ({result}): {reason}", err=True)
    sys.exit(1)


@main.command("doctor")
@_common_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of lines.")
@click.option("--prometheus.url", "prometheus_url", envvar="AITOOLS_PROMETHEUS_URL", default=None,
              help="Prometheus to ask (default http://127.0.0.1:9090, the monitoring stack's).")
@click.option("--alertmanager.url", "alertmanager_url", envvar="AITOOLS_ALERTMANAGER_URL", default=None,
              help="Alertmanager to ask (default http://127.0.0.1:9093, the monitoring stack's).")
@click.option("--receiver.address", "receiver_address", envvar="AITOOLS_RECEIVER_ADDRESS", default=None,
              help="The receiver's address (default: the installed service's, else 127.0.0.1:8731).")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool, prometheus_url=None, alertmanager_url=None, receiver_address=None,
           config_file=None, listen_address=None, web_config_file=None, log_level=None):
    """Check the whole chain (config, exporter, sources, Prometheus, rules, Alertmanager, receiver token,
    notifications, services): each line pass or FAIL with the command that fixes it; exit 0 only when all pass."""
    from exporter.doctor import DEFAULT_ALERTMANAGER_URL, DEFAULT_PROMETHEUS_URL, Doctor, render, render_json
    from exporter.receiver import DEFAULT_RECEIVER_ADDRESS
    from exporter.service import installed_receive_address

    settings = _settings(ctx, config_file=config_file, listen_address=listen_address, log_level=log_level)
    _setup_logging(settings.get("log_level") or "error")
    checks = Doctor(config_file=_config_file(settings.get("config_file")),
                    exporter_address=settings.get("listen_address") or DEFAULT_LISTEN_ADDRESS,
                    prometheus_url=prometheus_url or DEFAULT_PROMETHEUS_URL,
                    alertmanager_url=alertmanager_url or DEFAULT_ALERTMANAGER_URL,
                    receiver_address=receiver_address or installed_receive_address() or DEFAULT_RECEIVER_ADDRESS).run()
    click.echo(render_json(checks) if as_json else render(checks))
    sys.exit(0 if all(check.passed for check in checks) else 1)

"""Central's process: build everything in one place, start in order, stop in
reverse (the Mopidy way).  Returns a non-zero exit code on a start-up failure
so systemd sees it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import uvicorn

from bus.configfile import ConfigError
from bus.sdnotify import Notifier, set_journal_fields, write_probe
from bus.topics import Topics
from central import config as central_config
from central.ledger import Ledger
from central.mqtt import CentralLink, Incoming
from central.queue import QueueEngine
from central.service import Central
from central.store import Store
from central.web import create_app

logger = logging.getLogger(__name__)

TICK_S = 1.0
EXIT_CONFIG = 78  # EX_CONFIG (sysexits.h): systemd will not restart-loop on it by default


async def serve(loaded: central_config.Loaded, *, database: Path | None = None, http_port: int | None = None) -> int:
    cfg = loaded.config
    site = loaded.site
    store = Store(database or cfg.central.database)
    notifier = Notifier()  # systemd: READY/STATUS/WATCHDOG/STOPPING (docs/systemd.md)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    link: CentralLink | None = None
    central: Central | None = None
    server: uvicorn.Server | None = None
    try:
        engine = QueueEngine(store, site, cfg.queue)
        topics = Topics(site.site.id)
        def on_message(msg: Incoming) -> None:
            central.handle(msg.topic, msg.payload)

        def on_connected() -> None:
            central.resync()

        link = CentralLink(
            topics,
            host=cfg.mqtt.host,
            port=cfg.mqtt.port,
            client_id=cfg.mqtt.client_id,
            username=cfg.mqtt.username,
            password=cfg.mqtt.password.get_secret_value() if cfg.mqtt.password else None,
            tls=cfg.mqtt.tls,
            keepalive_s=cfg.mqtt.keepalive_s,
            on_message=on_message,
            on_connected=on_connected,
        )
        ledger = Ledger(store, site, loaded.catalog) if loaded.catalog is not None else None
        central = Central(engine, site, cfg.queue, link, ledger=ledger, command_ttl_s=cfg.payments.command_ttl_s)
        app = create_app(central, mqtt_connected=lambda: link.connected, config_hash=loaded.config_hash,
                         auth=cfg.auth)
        port = cfg.http.port if http_port is None else http_port
        # X-Forwarded-For is believed only from [http] trusted_proxies: uvicorn
        # would otherwise trust it from 127.0.0.1 by default (FORWARDED_ALLOW_IPS),
        # and anyone on the same machine could pick the address the login
        # throttle and the audit see (docs/security.md "Behind a reverse proxy").
        trusted = list(cfg.http.trusted_proxies)
        server = uvicorn.Server(
            uvicorn.Config(app, host=cfg.http.host, port=port, log_level="warning", lifespan="off", access_log=False,
                           proxy_headers=bool(trusted), forwarded_allow_ips=trusted)
        )
        server.install_signal_handlers = lambda: None  # we own the signals
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        link.start(loop)
        web = asyncio.create_task(server.serve(), name="http")
        logger.info("central for site %s: http://%s:%d/, broker %s:%d", site.site.id, cfg.http.host, port, cfg.mqtt.host, cfg.mqtt.port)

        def status() -> str:
            broker = "接続済み / broker connected" if link.connected else "接続中 / connecting to broker"
            return f"http://{cfg.http.host}:{port}/; {broker} {cfg.mqtt.host}:{cfg.mqtt.port}"

        probe = store.path.with_name(store.path.name + ".alive")

        def unhealthy() -> str | None:
            # Healthy = the loop turns, HTTP serves, the database's folder takes a write.
            return "http server stopped" if web.done() else write_probe(probe)

        # READY once the database is open and uvicorn listens; not waiting for the broker.
        while not (server.started or web.done() or stop.is_set()):
            await asyncio.sleep(0.02)
        if server.started:
            notifier.ready(status())
            notifier.start_watchdog(unhealthy, name="watchdog")
        while not stop.is_set():
            if web.done():
                exc = web.exception()
                logger.error("http server stopped: %s", exc or "exited")
                return 1
            try:
                await asyncio.wait_for(stop.wait(), TICK_S)
            except TimeoutError:
                central.tick()
                notifier.status(status())
        logger.info("central stopping")
        return 0
    finally:
        notifier.stopping()
        if central is not None:
            central.close()
        if server is not None:
            server.should_exit = True
            await asyncio.sleep(0.1)
        if link is not None:
            link.stop()
        store.close()


def run(config_path: str, *, database: str | None = None, http_port: int | None = None) -> int:
    try:
        loaded = central_config.load(config_path)
    except ConfigError as exc:
        logger.error("%s", exc)
        return EXIT_CONFIG
    set_journal_fields(SITE=loaded.site.site.id)
    return asyncio.run(serve(loaded, database=Path(database) if database else None, http_port=http_port))

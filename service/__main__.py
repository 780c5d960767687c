"""``python -m service``: serve a checkpoint over HTTP with uvicorn.

Every setting is a flag and a ``SERVICE_*`` environment variable (flags win); the API key is read from the
environment only (``SERVICE_API_KEY``), so that it does not show in the process list.
"""

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor

import uvicorn
from pydantic import ValidationError

from runtime import EngineError, load_engine

from .app import create_app, lower_thread_priority
from .logs import log_config
from .memory import keep_large_blocks_out_of_heaps
from .probes import ProbeServer
from .protocol import HeadLimits, first_answer, guarded_http
from .routes.detect import early_refusal
from .routes.health import early_liveness
from .settings import Settings

ENV_ONLY = {"api_key"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve a shufflenet-detect checkpoint: POST /detect, GET /healthz /readyz /metrics /v1/model, "
        "and a page to try it at /.",
        epilog="Each option can also be set as SERVICE_<NAME> in the environment (e.g. SERVICE_MAX_BATCH_SIZE=8); "
        "flags override the environment. Set SERVICE_API_KEY to require a key on every endpoint but /healthz.",
    )
    for name, field in Settings.model_fields.items():
        if name in ENV_ONLY:
            continue
        default = field.get_default(call_default_factory=True)
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            metavar=name.upper(),
            help=f"{field.description or name} (env SERVICE_{name.upper()}; default {default})",
        )
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument(
        "--access-log", action=argparse.BooleanOptionalAction, default=True, help="log every request (default on)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    log_level, access_log = args.pop("log_level"), args.pop("access_log")
    overrides = {name: value for name, value in args.items() if value is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            print(f"python -m service: {where}: {error['msg']}", file=sys.stderr)
        return 2
    keep_large_blocks_out_of_heaps()
    try:  # a bad model file is reported here in one line, not as a start-up traceback
        # Loaded in a thread at the workers' priority: the runtime's own threads inherit it (--worker-nice).
        with ThreadPoolExecutor(1, initializer=lower_thread_priority, initargs=(settings.worker_nice,)) as loader:
            engine = loader.submit(load_engine, settings.checkpoint, settings.engine, threads=settings.threads).result()
    except EngineError as exc:
        print(f"python -m service: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    app = create_app(settings, engine=engine)
    probes = None
    if settings.probe_port is not None:
        try:
            probes = ProbeServer(app, settings.probe_host, settings.probe_port)
        except OSError as exc:  # as uvicorn ends for its own port: status 3
            print(f"python -m service: probe port {settings.probe_port}: {exc.strerror or exc}", file=sys.stderr)
            return 3
        probes.start()
    try:
        _serve(app, settings, log_level=log_level, access_log=access_log)
    finally:
        if probes is not None:
            probes.stop()
    return 0


def _serve(app, settings: Settings, *, log_level: str, access_log: bool) -> None:
    head_limits = HeadLimits(settings.max_header_bytes, settings.max_headers, settings.read_timeout_s)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_http(head_limits, first_answer(early_liveness(app), early_refusal(app))),
        limit_concurrency=settings.limit_concurrency,
        timeout_keep_alive=settings.keep_alive_s,
        log_config=log_config(),
        log_level=log_level,
        access_log=access_log,
        server_header=False,
        # SIGTERM: stop accepting, let accepted requests finish (they time out by themselves), then exit.
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
    )


if __name__ == "__main__":
    sys.exit(main())

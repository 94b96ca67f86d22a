"""``tympan serve`` (the HTTP API). The offline ``tympan predict`` lives in :mod:`tympan.batch.cli`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tympan.errors import BundleError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the model over HTTP (FastAPI + uvicorn; see docs/api.md)")
    p.add_argument("--bundle", type=Path, default=None,
                   help="model bundle directory (default: the shipped tympan/assets/default)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (each loads the model)")
    p.add_argument("--max-batch-size", type=int, default=None, help="most model windows per forward pass (16)")
    p.add_argument("--max-wait-ms", type=float, default=None,
                   help="how long a pass that is not full waits for requests being decoded (0 ms)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch and ONNX Runtime threads per forward pass (default 1; --passes uses the other cores)")
    p.add_argument("--passes", type=int, default=None,
                   help="forward passes at once (ONNX Runtime/TorchScript; default: cores / torch threads)")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("--backend", default=None, choices=("auto", "onnx", "torchscript", "eager"),
                   help="how the network runs: auto (default: the fastest that agrees with eager to 1e-4, "
                        "measured at load), onnx (ONNX Runtime, CPU), torchscript or eager")
    p.add_argument("--log-level", default=None, help="uvicorn log level (info)")
    p.add_argument("--max-body-bytes", type=int, default=None, help="largest request body (20 MB)")
    p.add_argument("--max-inflight-body-bytes", type=int, default=None,
                   help="request-body bytes all requests may hold at once; beyond it 503 (4 x max body)")
    p.add_argument("--read-timeout", type=float, default=None, dest="read_timeout_s",
                   help="seconds to wait for a request's headers and for each piece of its body (10)")
    p.add_argument("--body-timeout", type=float, default=None, dest="body_timeout_s",
                   help="seconds a whole request body may take to arrive (120)")
    p.add_argument("--keep-alive-timeout", type=float, default=None, dest="keep_alive_timeout_s",
                   help="seconds an idle keep-alive connection stays open (5)")
    p.add_argument("--store", default=None, metavar="DB",
                   help="SQLite event store for the events of every /stream (created if missing; "
                        "`tympan events list DB` reads it)")
    p.add_argument("--alerts", default=None, metavar="TOML",
                   help="alert rules and sinks for /stream events, as `tympan listen --alerts` (a [drift] table: "
                        "a drift check per stream); see docs/live.md")
    p.set_defaults(func=cmd_serve)



def _bundle_dir(arg: Path | None) -> Path:
    from tympan.bundle import read_metadata
    from tympan.serving.app import default_bundle_path

    path = default_bundle_path() if arg is None else arg
    read_metadata(path)  # one clear line if it is not a bundle
    return path


def _passive_openmp() -> None:
    """Run torch's OpenMP threads with ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose.

    A server shares its cores with decoding, the event loop and often other processes;
    OpenMP's default spin-waiting then turns a 10-ms forward pass into hundreds of ms (measured
    on a busy 2-core machine). libgomp reads the policy only when torch is first imported, so
    when ``tympan`` already imported it, the command re-executes itself once with it set.
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if "torch" in sys.modules and sys.argv[1:2] == ["serve"]:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "tympan", *sys.argv[1:]])


def _log_to_stderr(level: str) -> None:
    """tympan's own log lines (model ready, backend chosen and its timings) beside uvicorn's."""
    import logging

    logger = logging.getLogger("tympan")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(getattr(logging, str(level).upper(), logging.INFO))


def cmd_serve(args: argparse.Namespace) -> int:
    from tympan.ports import check_port_free

    _passive_openmp()  # first: reading the bundle imports torch, and after that it would cost a re-exec
    bundle = _bundle_dir(args.bundle)  # a bad --bundle fails before anything else happens
    check_port_free(args.host, args.port, "--port")  # one line, before the model loads
    device = args.device or os.environ.get("TYMPAN_DEVICE") or "cpu"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise BundleError(f"--device {device}: this machine has no usable CUDA device (torch {torch.__version__})")
    from tympan.serving.settings import Settings

    overrides = {"max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
                 "torch_threads": args.torch_threads, "device": args.device, "backend": args.backend,
                 "passes": args.passes,
                 "workers": args.workers, "log_level": args.log_level,
                 "max_body_bytes": args.max_body_bytes, "max_inflight_body_bytes": args.max_inflight_body_bytes,
                 "read_timeout_s": args.read_timeout_s, "body_timeout_s": args.body_timeout_s,
                 "keep_alive_timeout_s": args.keep_alive_timeout_s, "store": args.store, "alerts": args.alerts}
    settings = Settings.from_env(**overrides)
    outputs = None
    if settings.store is not None or settings.alerts is not None:
        from tympan.bundle import read_metadata
        from tympan.serving.stream_outputs import StreamOutputs

        # before the model loads and the port is bound: a bad rules file or store is one line, exit 2
        outputs = StreamOutputs.open(settings.store, settings.alerts, read_metadata(bundle)["classes"])
    preload = None
    if args.workers == 1:  # the model builds and warms while FastAPI and uvicorn import
        from tympan.serving.preload import start_preload

        preload = start_preload(bundle, settings)
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise BundleError("serving needs the 'serve' extra: pip install 'tympan[serve]'") from None
    from tympan.serving.app import create_app
    from tympan.serving.server import uvicorn_config

    _log_to_stderr(settings.log_level)
    common = {"host": args.host, "port": args.port, "log_level": settings.log_level,
              "timeout_graceful_shutdown": 5}
    if args.workers > 1:  # each worker builds its own app from the environment (and opens the store, alerts)
        if outputs is not None:
            outputs.close()
        os.environ["TYMPAN_BUNDLE"] = str(bundle.resolve())
        for key, value in overrides.items():
            if value is not None:
                os.environ[f"TYMPAN_{key.upper()}"] = str(value)
        uvicorn.run("tympan.serving.app:create_app_from_env", factory=True, workers=args.workers,
                    http="tympan.serving.server:TimedH11Protocol",  # reads TYMPAN_READ_TIMEOUT_S
                    timeout_keep_alive=settings.keep_alive_timeout_s, **common)
    else:
        config = uvicorn_config(create_app(bundle, settings, preload, outputs), settings, args.host, args.port,
                                timeout_graceful_shutdown=5)
        server = uvicorn.Server(config)
        server.run()
        if not server.started:
            raise BundleError(f"the server did not start on {args.host}:{args.port} (see the log above)")
    return 0

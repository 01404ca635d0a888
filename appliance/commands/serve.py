"""`appliance serve`: run the HTTP server (flags, then APPLIANCE_* env vars, then an optional TOML file)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from appliance.cli import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="run the HTTP server (OpenAI-compatible API, RAG, admin)")
    p.add_argument("--host", help="listen address (APPLIANCE_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port, 0 = any free port (APPLIANCE_PORT, default 8080)")
    p.add_argument("--data-dir", help="state directory (APPLIANCE_DATA_DIR, default ./data)")
    p.add_argument("--model", help="GGUF file or HF checkpoint dir (APPLIANCE_MODEL, default: bundled)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="APPLIANCE_DEVICE, default auto")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--quantization", choices=["auto", "none", "int8", "int4"],
                   help="weights (APPLIANCE_QUANTIZATION, default none): auto = what the checkpoint carries")
    p.add_argument("--qdrant-url", help="use a Qdrant server instead of embedded Qdrant Edge")
    p.add_argument("--kv-cache-gib", type=float, help="KV cache size on CPU (default 1.0)")
    p.add_argument("--max-num-seqs", type=int, help="largest running batch (default 64)")
    p.add_argument("--max-queued-requests", type=int, help="bounded queue: requests (default 256)")
    p.add_argument("--max-queued-tokens", type=int, help="bounded queue: prompt tokens (default 262144)")
    p.add_argument("--drain-timeout", dest="drain_timeout_s", type=float,
                   help="seconds in-flight requests get after SIGTERM (default 30)")
    p.add_argument("--log-prompts", action="store_true", default=None,
                   help="store prompts in the audit log (off by default)")
    p.add_argument("--tls-cert", help="PEM certificate (chain): serve HTTPS (APPLIANCE_TLS_CERT; "
                   "needs --tls-key)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert (APPLIANCE_TLS_KEY)")
    p.add_argument("--config", help="TOML file with server settings (APPLIANCE_CONFIG)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=run)


OVERRIDES = ("host", "port", "data_dir", "model", "device", "dtype", "quantization", "qdrant_url",
             "kv_cache_gib", "max_num_seqs", "max_queued_requests", "max_queued_tokens", "drain_timeout_s",
             "log_prompts", "tls_cert", "tls_key")


def run(args: argparse.Namespace) -> int:
    from appliance.server.config import ConfigError, load_config
    from appliance.server.runner import serve
    from appliance.server.tls import ssl_context

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config({name: getattr(args, name) for name in OVERRIDES}, args.config)
        ssl_context(config)  # checked here too: one line on stderr, before the event loop starts
    except ConfigError as exc:
        raise UserError(str(exc)) from None

    def announce(url: str) -> None:
        print(f"appliance: listening on {url} (loading the model; /health turns 200 when ready)", flush=True)

    return asyncio.run(serve(config, announce))

"""HTTPS for the server: an SSL context from a PEM certificate (chain) and its private key.

Both files or neither: a certificate without its key (or the reverse) is a mistake worth a clear
error, never a silent fall-back to plain HTTP. The files are read once at start-up; any problem
(missing, unreadable, not PEM, key not matching the certificate) is a ConfigError naming the file.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from appliance.server.config import ConfigError, ServerConfig


def ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The server's SSL context, or None when TLS is off."""
    cert, key = config.tls_cert, config.tls_key
    if not cert and not key:
        return None
    if not cert or not key:
        given, missing = ("--tls-cert", "--tls-key") if cert else ("--tls-key", "--tls-cert")
        raise ConfigError(f"{given} needs {missing} too (APPLIANCE_TLS_CERT and APPLIANCE_TLS_KEY: both or "
                          "neither)")
    for label, path in (("certificate", cert), ("key", key)):
        _check_readable(label, Path(path))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ConfigError(f"cannot use TLS certificate {cert} with key {key}: {_reason(exc)}") from None
    return context


def _reason(exc: ssl.SSLError) -> str:
    if exc.reason == "KEY_VALUES_MISMATCH":
        return "the key does not belong to the certificate"
    return f"not a PEM certificate and its PEM private key ({exc.reason or exc})"


def _check_readable(label: str, path: Path) -> None:
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ConfigError(f"cannot read TLS {label} {path}: {exc.strerror or exc}") from None

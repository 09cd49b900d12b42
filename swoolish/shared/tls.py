"""The TLS context a worker serves with, built from the certificate files on disk.

The master calls :func:`server_context` once before it forks, only to refuse a start
with files that do not load (one line, exit status 2). Each worker builds its own
context after the fork, from the files as they are then, so a reload (new workers)
serves a renewed certificate without a restart (docs/deployment.md, "TLS").
"""

from __future__ import annotations

import ssl

from ..core.errors import SettingError
from ..core.settings import Settings

__all__ = ["ALPN", "server_context"]

#: What a client may negotiate (RFC 7301): HTTP/1.1, the protocol a WebSocket
#: handshake rides on (RFC 6455 §4.1); an HTTP/2-only client learns it must not try h2.
ALPN = ("http/1.1",)

_VERIFY_MODES = {"optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """A server context for ``settings``, or None when ``ssl_cert_file`` is not set.

    Raises :class:`SettingError` with a one-line reason when the certificate, its key
    or the CA bundle cannot be loaded, or when a TLS option is given without what it
    needs.
    """
    cert, key, ca = settings.ssl_cert_file, settings.ssl_key_file, settings.ssl_ca_file
    mode = settings.ssl_client_cert
    if cert is None:
        if key is not None or ca is not None or mode != "none":
            raise SettingError(
                "the TLS options (--ssl-keyfile, --ssl-ca-certs, --ssl-client-cert) "
                "need --ssl-certfile, the certificate to serve"
            )
        return None
    if mode != "none" and ca is None:
        raise SettingError(
            f"ssl_client_cert={mode} needs ssl_ca_file (--ssl-ca-certs): the CA bundle "
            "client certificates are verified against"
        )
    # Not ssl.create_default_context(): for CLIENT_AUTH it would also trust the system's
    # CAs, so any publicly signed certificate would pass as a client certificate.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # No TLS 1.3 session tickets. With the two OpenSSL sends after a TLS 1.3 handshake, a
    # request that arrived with the client's Finished was now and then left unread
    # inside the connection's TLS layer (uvloop 0.23), and the client got no answer
    # until handshake_timeout: 1 to 6 wss:// handshakes in 300, none without tickets
    # (docs/deployment.md, "TLS"). The cost: a TLS 1.3 client that reconnects makes a
    # full handshake rather than resuming its session.
    context.num_tickets = 0
    try:
        # A password callback that gives none: an encrypted key fails here, instead of
        # OpenSSL prompting on a terminal that a server has no one at.
        context.load_cert_chain(cert, key, password=_no_password)
    except (OSError, ValueError) as exc:
        with_key = f" with key {key}" if key else ""
        raise SettingError(
            f"cannot load TLS certificate {cert}{with_key}: {_describe(exc)}"
        ) from None
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ValueError) as exc:
            raise SettingError(f"cannot load TLS CA certificates {ca}: {_describe(exc)}") from None
    context.verify_mode = _VERIFY_MODES.get(mode, ssl.CERT_NONE)
    context.set_alpn_protocols(list(ALPN))
    return context


def _no_password() -> bytes:
    return b""


def _describe(exc: Exception) -> str:
    """What went wrong, in words for one line (OpenSSL's own text names its sources)."""
    if isinstance(exc, ssl.SSLError):
        if exc.reason == "KEY_VALUES_MISMATCH":
            return "the private key does not match the certificate"
        if exc.reason:
            return exc.reason.lower().replace("_", " ")
        return "no PEM certificate chain with an unencrypted private key found"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__

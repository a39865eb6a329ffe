"""TLS and credentials of the broker connection: the ``ssl.SSLContext`` of ``mqtt.tls``
(:func:`tls_context`), the broker password (:func:`broker_password`), and OpenSSL errors
as words."""

from __future__ import annotations

import re
import ssl

from monitor.config import MqttConfig, TLSConfig, read_secret

_TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
#: OpenSSL's ``[LIB: CODE]`` / ``[Errno N]`` tags and ``(_ssl.c:NNN)`` source positions
_SSL_NOISE = re.compile(r"\[[A-Za-z0-9_: ]+\]\s*|\s*\(_ssl\.c:\d+\)")


def _ssl_text(exc: BaseException) -> str:
    """An ``ssl``/``OSError`` as words: ``certificate verify failed: Hostname mismatch,
    ...``, ``Connection refused``, without OpenSSL's tags."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message.rstrip('.')}"
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, ssl.SSLError):
        return exc.strerror  # "No such file or directory", "Connection refused"
    return _SSL_NOISE.sub("", str(exc)).strip() or type(exc).__name__


def _readable_certs(path: str) -> bool:
    """Whether ``path`` holds at least one PEM certificate."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except (OSError, ValueError):
        return False
    return True


def tls_context(tls: TLSConfig) -> ssl.SSLContext:
    """The client context for ``mqtt.tls``; OSError naming the file that cannot be used."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED  # always: verify_hostname only skips the name check
    ctx.check_hostname = tls.verify_hostname
    ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
    try:
        if tls.ca_file is not None:
            ctx.load_verify_locations(cafile=tls.ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (OSError, ValueError) as exc:
        where = f"mqtt.tls.ca_file {tls.ca_file}" if tls.ca_file else "the system CA store"
        raise OSError(f"{where}: cannot load CA certificates: {_ssl_text(exc)}") from None
    if tls.cert_file is not None:
        key_file = tls.key_file or tls.cert_file

        def no_passphrase() -> str:
            # OpenSSL would otherwise prompt on the terminal, and a daemon has none
            raise OSError(
                f"mqtt.tls.key_file {key_file}: the key is encrypted; vitalmon "
                "needs an unencrypted key (readable only by its user)"
            )

        try:
            ctx.load_cert_chain(tls.cert_file, key_file, password=no_passphrase)
        except (OSError, ValueError) as exc:
            if str(exc).startswith("mqtt.tls."):
                raise OSError(str(exc)) from None
            if not _readable_certs(tls.cert_file):
                raise OSError(
                    f"mqtt.tls.cert_file {tls.cert_file}: no PEM certificate in it "
                    f"({_ssl_text(exc)})"
                ) from None
            raise OSError(
                f"mqtt.tls.key_file {key_file}: not the PEM private key of "
                f"cert_file {tls.cert_file} ({_ssl_text(exc)})"
            ) from None
    return ctx


def broker_password(cfg: MqttConfig) -> str | None:
    """The broker password: ``password_file``'s first line, else ``password`` (from the
    environment). OSError naming the file, never its content, when it cannot be read."""
    if cfg.password_file:
        where = f"mqtt.password_file {cfg.password_file}"
        try:
            secret = read_secret(cfg.password_file)
        except UnicodeDecodeError:
            raise OSError(f"{where}: not UTF-8 text") from None
        except OSError as exc:
            raise OSError(
                f"{where}: cannot read it: {exc.strerror or type(exc).__name__}"
            ) from None
        if not secret:
            raise OSError(f"{where}: the first line is empty")
        return secret
    return cfg.password

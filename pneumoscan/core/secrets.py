"""Secrets a command is given (the service's API key, the PACS's Authorization header value), read one way from a
file or an environment variable, so that no source accepts what another refuses; a file that every user can read
warned of one way, a client certificate's key checked one way (:func:`check_client_cert`)."""

from __future__ import annotations

import logging
import os
import ssl
import stat
from pathlib import Path

log = logging.getLogger(__name__)


def read_secret(path: Path | str | None, env: str, kind: str) -> str | None:
    """``path``'s text, else ``$ENV``'s, without the blanks around it (the line break a file, an env file written by
    ``echo`` or a secret mounted from a file ends in); None when neither is given. Refused with a reason that never
    shows the value: a file that is not text (raw bytes), an empty file or a variable of blanks (running without the
    secret while the operator believes one is set), and a value with a line break or another control character,
    which no header carries (a service started with it answered every client 401; requests refused it quoting the
    value). A file every user of the machine can read is warned of (:func:`warn_if_shared`)."""
    if path is not None:
        return one_secret(secret_text(path, kind), path, None, kind)
    if (text := os.environ.get(env)) is not None:  # set but empty (ENV= in a unit file) is refused, not unset
        return one_secret(text, None, env, kind)
    return None


def secret_text(path: Path | str, kind: str) -> str:
    """The text of the ``kind`` file at ``path``, refused naming the file where it cannot be read or is not text."""
    try:
        return Path(path).read_text()
    except OSError as e:
        raise cannot_read(e, f"the {kind} file {path}") from None
    except UnicodeDecodeError:  # raw bytes (`openssl rand 32`): the codec's words named no file, and a byte of it
        raise ValueError(f"the {kind} file {path} is not text: it must hold one {kind} value, in printable "
                         "ASCII") from None


def one_secret(text: str, path: Path | str | None, env: str | None, kind: str) -> str:
    """``text``, of the file at ``path`` or else of ``$ENV``, as one value (:func:`read_secret`'s checks)."""
    source = f"the {kind} file {path}" if path is not None else str(env)
    value = text.strip()
    if not value:
        raise ValueError(f"the {kind} file {path} is empty" if path is not None else
                         f"{env} is set but empty or only blanks: set it to the {kind}, or unset it")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{source} holds more than one line or a control character, which no client can send in a "
                         f"header: it must hold one {kind} value")
    if path is not None:
        warn_if_shared(path, source)
    return value


def cannot_read(error: OSError, source: str) -> OSError:
    """``error`` (a secret's file, or a client certificate's, that would not open) as said to the operator: a bare
    "permission denied" named no file nor who must read it. ``source``: the file, as named (``the auth file FILE``)."""
    return OSError(error.errno, f"{source} cannot be read ({(error.strerror or str(error)).lower()}): it must be a "
                                "file the user running pneumoscan can read")


def warn_if_shared(path: Path | str, source: str) -> None:
    """Warn when every user of the machine can read the secret at ``path`` (``source``: what it is, named in the
    warning): `echo` into a file leaves it so under the usual umask, and nothing had said it."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & stat.S_IROTH:
        log.warning("%s is readable by every user of this machine (mode %o): make it readable by the account that "
                    "runs pneumoscan alone (chmod 600, or 640 with a group of its own)", source, mode)


def _no_passphrase() -> bytes:
    """The passphrase OpenSSL asks for an encrypted key: none (it would prompt on the terminal, and neither requests
    nor the Redis client passes one on)."""
    raise ValueError("is encrypted, and a key with a passphrase cannot be used: give it decrypted (openssl pkey -in "
                     "KEY -out KEY.pem), readable by the account that runs pneumoscan alone")


def check_client_cert(cert: str, key: str | None, cert_said: str, key_said: str) -> None:
    """Check the client certificate at ``cert`` and its key (at ``key``, or in ``cert``'s file where None) before any
    connection: each file readable, the pair loaded as TLS loads it, and the file with the key warned of when every
    user of the machine can read it (as a secret's file is); a file of neither failed only at the first connection,
    as a TLS failure that named no file. ``cert_said``, ``key_said``: the settings that gave them, as the errors name
    them."""
    for what, path in (("client certificate", cert), ("client key", key)):
        try:
            if path is not None:
                Path(path).open("rb").close()
        except OSError as e:
            raise cannot_read(e, f"the {what} file {path}") from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=_no_passphrase)
    except ValueError as e:  # a passphrase asked for (_no_passphrase)
        raise ValueError(f"the client key in {key or cert} {e}") from None
    except ssl.SSLError as e:
        raise ValueError(f"{cert_said} {cert} (with {key_said} {key or 'none'}) is not a PEM certificate with its "
                         f"private key ({e.reason or e}): give the certificate and its key in one PEM file, or the key "
                         f"in {key_said}") from None
    warn_if_shared(key or cert, f"the client key file {key or cert}")  # once it is known to hold the key

"""Secrets a command is given (the service's API key, the PACS's Authorization header value), read one way from a
file or an environment variable, so that no source accepts what another refuses; a file that every user can read
warned of one way, a client key's too."""

from __future__ import annotations

import logging
import os
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

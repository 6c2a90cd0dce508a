"""The platform key: read from its file (mode, owner and size checked), never shown; the
claims of its JWT payload, read without verifying anything: its expiry, and whether it can see
tasks posted with a given submitter (what settling needs to prove a task absent).
"""

import os
import time

from .config import ConfigError, parse_json
from .output import SECRETS, one_line


def key_sees_submitter(key, submitter):
    """'' when the key can see tasks posted with this submitter (a superuser's key, or submitter
    equal to its username or nickname), else why not: then a lookup proves nothing."""
    data = jwt_claims(key).get("data")
    data = data if isinstance(data, dict) else {}
    if data.get("is_superuser") in (True, 1):
        return ""
    names = [
        name
        for name in (data.get("username"), data.get("nickname"))
        if isinstance(name, str) and name
    ]
    if submitter in names:
        return ""
    return (
        "the key cannot see the hook's tasks (not a superuser's key, and submitter {} is not its username "
        "or nickname{}): set the project's submitter to {} so that flush can look its tasks up".format(
            one_line(repr(submitter), 60),
            " " + one_line(repr(names), 80) if names else "",
            one_line(repr(names[0]), 60) if names else "the key's username",
        )
    )


KEY_FILE_LIMIT = 16 * 1024


JWT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=")


_KEYS = {}  # read once a process


def read_auth_key(codo):
    """The platform key, checked: $CODO_AUTH_KEY (admin use) or the key file. Never shown.

    Raises ConfigError with one line that says what is wrong and never echoes the file.
    """
    source = os.environ.get("CODO_AUTH_KEY")
    where = "$CODO_AUTH_KEY" if source else codo["auth_key_file"]
    if where not in _KEYS:
        raw = source.encode("utf-8", "surrogateescape") if source else _read_key_file(where)
        key = _checked_key(raw, where)
        SECRETS.add(key)
        _KEYS[where] = key
    return _KEYS[where]


def _read_key_file(path):
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as error:
        raise ConfigError(
            f"cannot read the platform key {path}: {error.strerror or type(error).__name__}"
        )
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(
                f"the platform key {path} is not a regular file: point codo.auth_key_file at the key"
            )
        if info.st_mode & 0o077:
            raise ConfigError(
                "the platform key {} can be read by others (mode {:04o}): chmod 600 it, owned by the git user, "
                "as the role installs it; the key is not used until then".format(
                    path, stat.S_IMODE(info.st_mode)
                )
            )
        if info.st_uid not in (os.geteuid(), 0):
            raise ConfigError(
                f"the platform key {path} belongs to uid {info.st_uid}, not to this user: chown it"
            )
        data = os.read(fd, KEY_FILE_LIMIT + 1)
    except OSError as error:
        raise ConfigError(
            f"cannot read the platform key {path}: {error.strerror or type(error).__name__}"
        )
    finally:
        os.close(fd)
    if len(data) > KEY_FILE_LIMIT:
        raise ConfigError(
            f"the platform key file {path} is too long to hold a key: point codo.auth_key_file at the key"
        )
    return data


def _checked_key(raw, where):
    key = raw.strip(b" \t\r\n")
    if not key:
        raise ConfigError(
            f"the platform key file {where} is empty: write the platform's auth_key there (the role takes it from "
            "vault_codo_hooks_auth_key); releases wait in the spool until it is there"
        )
    parts = key.split(b".")
    shape = (
        len(parts) == 3
        and parts[0]
        and parts[1]
        and all(set(part.decode("latin-1")) <= JWT_CHARS for part in parts)
    )
    if not shape:
        inside = " (it holds more than one line)" if b"\n" in key or b"\r" in key else ""
        raise ConfigError(
            f"{where} does not hold a platform key{inside}: the key is one line, a JWT: three base64url "
            "parts joined by dots; releases wait in the spool until it is fixed"
        )
    key = key.decode("ascii")
    if not jwt_claims(key):
        raise ConfigError(
            f"{where} does not hold a platform key: its middle part is not a JWT's JSON payload (the platform "
            "answers such a key with HTTP 500); releases wait in the spool until it is fixed"
        )
    return key


def jwt_claims(key):
    """The key's payload (its middle part), read without verifying anything; {} if it is not JSON."""
    import base64

    middle = key.split(".")[1]
    try:
        claims = parse_json(
            base64.urlsafe_b64decode(middle + "=" * (-len(middle) % 4)).decode("utf-8")
        )
    except (ValueError, RecursionError, UnicodeDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


KEY_EXPIRY_WARNING_S = 14 * 86400


def key_expiry(key, now=None):
    """(problem, warning) about the key's `exp` claim; this platform ignores it, a gateway may not."""
    exp = jwt_claims(key).get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool) or not exp - exp == 0:
        return "", ""
    now = time.time() if now is None else now
    when = time.strftime("%Y-%m-%d", time.gmtime(min(exp, 253402300799)))
    if exp <= now:
        return (
            f"the platform key expired on {when}: mint a new one (a gateway in front may refuse it)",
            "",
        )
    if exp - now < KEY_EXPIRY_WARNING_S:
        return (
            "",
            f"the platform key expires on {when}, in {int((exp - now) // 86400)} day(s): mint a new one",
        )
    return "", ""


def key_exp(key):
    """The key's `exp` claim as epoch seconds, or None."""
    exp = jwt_claims(key).get("exp")
    if isinstance(exp, (int, float)) and not isinstance(exp, bool) and exp - exp == 0:
        return exp
    return None

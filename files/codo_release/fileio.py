"""Files of the hook's own: directories made private whatever the umask, files created without
following links, checked for owner, mode and links before they are trusted, written durably.
"""

import os
import time


def private_dir(path, owners):
    """Make `path` 0750 (the umask has no say), or check that it is a directory of ours no one else writes."""
    import stat

    try:
        os.mkdir(path, 0o750)
        os.chmod(path, 0o750)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid not in owners or info.st_mode & 0o022:
        raise OSError(
            0,
            f"{path} must be a directory of this user's that no one else can write (chown, chmod 750)",
        )


def untrusted_file(info, owners, limit):
    """Why a file the hook reads back is not one it could have written; '' when it is."""
    import stat

    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_uid not in owners:
        return f"belongs to uid {info.st_uid}, not to this user"
    if info.st_mode & 0o022:
        return "others may write it (mode {:04o})".format(stat.S_IMODE(info.st_mode))
    if info.st_nlink != 1:
        return "it has other names (hard links)"
    if info.st_size > limit:
        return f"over {limit} bytes"
    return ""


def create_private(path):
    """A new file of ours, 0640 whatever the umask, never through a link."""
    unlink_quietly(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    os.fchmod(fd, 0o640)
    return os.fdopen(fd, "w", encoding="utf-8")


def unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def now_text():
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_own_file(path, owners, limit=None):
    """A binary handle on a regular file of ours reached without a link, or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    info = os.fstat(fd)
    if untrusted_file(info, owners, limit if limit is not None else info.st_size):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")

"""The digests the fleet status compares: of the hook program and of the installed configs.

Computed on the node (library/codo_hooks_status.py) over what is installed, and on the control
node (action_plugins/codo_hooks_fleet.py) over the role's own files/, with the same code.
Python 3.6+, standard library only.
"""

import hashlib

SHORT = 12


def of_files(named):
    """sha256 over (name, content) pairs in name order; a NUL ends each name, so no two sets of
    files share a digest by moving bytes between a name and a content."""
    total = hashlib.sha256()
    for name, data in sorted(named):
        total.update(name.encode("utf-8", "surrogateescape") + b"\0")
        total.update(hashlib.sha256(data).digest())
    return total.hexdigest()


def entry_body(data):
    """The entry without its first line, which the role rewrites to name the node's interpreter
    (codo_hooks_python): the same program under another Python is the same program."""
    if data.startswith(b"#!"):
        return data.split(b"\n", 1)[1] if b"\n" in data else b""
    return data


def program(entry_name, entry, modules):
    """The hook program's digest: its entry (first line aside) and its modules, by name.

    entry: the entry's bytes; modules: [(name, bytes)]."""
    return of_files([(entry_name, entry_body(entry))] + list(modules))


def short(digest):
    return digest[:SHORT] if digest else "-"

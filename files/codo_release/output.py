"""What the pusher sees: one short `codo:` line per event.

GitLab shows a hook's output to the pusher as `remote:` lines. Everything written goes through
`_write`, which scrubs the secrets this process holds and puts text from outside (a tag, a
platform message, a path) on one line, so that nothing can forge a `codo:` or `GL-HOOK-ERR:` line.
"""

import sys


def say(message):
    """One line to the pusher (GitLab shows hook output as `remote:` lines)."""
    _write(sys.stdout, "codo: " + message)


def refuse_line(message):
    """A refusal: the `codo:` line, plus the line GitLab's web UI shows for web-created tags."""
    say(message)
    _write(sys.stderr, "GL-HOOK-ERR: codo: " + message)


# Secrets this process holds (the platform key): scrubbed from every line written, whatever put them there.
SECRETS = set()


def _write(stream, line):
    # GitLab hands hooks no LANG; on Python 3.6 that means an ASCII stdout.
    for secret in SECRETS:
        line = line.replace(secret, "********")
    stream.flush()
    stream.buffer.write((one_line(line, limit=None) + "\n").encode("utf-8", "replace"))
    stream.buffer.flush()


def one_line(text, limit=300):
    """Text from outside (a platform message, a tag, a path) on one line: line breaks, controls,
    invisible and separator characters escaped, so none can start a forged `codo:` or `GL-HOOK-ERR:` line.
    Secrets are masked before it is cut short: a cut must not leave a piece of the key unmasked."""
    text = str(text)
    for secret in SECRETS:
        text = text.replace(secret, "********")
    if limit and len(text) > limit:
        text = text[:limit] + "..."
    if (
        text.isprintable()
    ):  # str.isprintable: no character of Unicode's Other or Separator classes but " "
        return text
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)


def odd_character(name):
    """The first space, control, format, separator or undecodable character of a name; '' if none."""
    if name.isprintable() and " " not in name:
        return ""
    return next(char for char in name if char == " " or not char.isprintable())


def shown(name):
    """A ref name as it may be shown: as is when plain, else quoted with anything odd escaped."""
    import re

    return name if re.match(SHELL_SAFE_TAG, name, re.ASCII) else one_line(ascii(name))


SHELL_SAFE_TAG = (
    r"[A-Za-z0-9._/+,=:@%][A-Za-z0-9._/+,=:@%-]*\Z"  # compiled on first use, not on every start
)

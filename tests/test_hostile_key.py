"""The platform key file: read once, checked, never echoed; a file others can read is refused like ssh does.

Each case keeps the release (pending) and says in one line what is wrong without showing content.
"""

import os

import pytest
from conftest import AUTH_KEY, assert_key_nowhere, new_tag_line

RELEASE = "release-dbtt-1"


def push(site, **env):
    result = site.run_hook("post-receive", [new_tag_line(RELEASE)], **env)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def write_key(site, data, mode=0o600):
    with open(site.key_file, "wb") as handle:
        handle.write(data)
    os.chmod(site.key_file, mode)


def kept_once_fixed(site):
    """The release waits in the spool, and goes once the key is right: exactly one task."""
    assert [entry["tag"] for entry in site.spool("pending")] == [RELEASE]
    assert site.fake.tasks == []
    write_key(site, (AUTH_KEY + "\n").encode())
    assert site.flush().returncode == 0
    assert [task.args["TAG"] for task in site.fake.tasks] == [RELEASE]


@pytest.mark.parametrize(
    "data, says",
    [
        pytest.param(AUTH_KEY.encode() + b"\nsecond-line", "more than one line", id="second line"),
        pytest.param(
            AUTH_KEY.encode() + b"\rX-Injected: 1", "more than one line", id="carriage return"
        ),
        pytest.param(
            b"Authorization: " + AUTH_KEY.encode(), "does not hold a platform key", id="header text"
        ),
        pytest.param(AUTH_KEY.encode() + b"\x00", "does not hold a platform key", id="NUL"),
        pytest.param(
            b"aGVsbG8.bm90IGpzb24.c2ln", "not a JWT's JSON payload", id="payload not JSON"
        ),
    ],
)
def test_a_malformed_key_is_named_never_echoed_and_the_release_waits(site, data, says):
    write_key(site, data)
    result = push(site)
    assert says in result.stdout
    assert len(result.stdout.strip().split("\n")) == 1
    assert (
        site.fake.requests == []
    )  # nothing malformed is sent, so the platform never answers 500 to it
    assert_key_nowhere(site, result.stdout, result.stderr)
    kept_once_fixed(site)


def test_a_key_file_pointed_at_another_file_never_prints_that_file(site, tmp_path):
    other = tmp_path / "shadow-like"
    other.write_text("root:$6$very-private-hash-1234:19000:0:99999:7:::\nline two\n")
    os.chmod(other, 0o600)
    site.config["codo"]["auth_key_file"] = str(other)
    site.write_config()
    result = push(site)
    assert "very-private-hash" not in result.stdout + result.stderr
    assert "does not hold a platform key" in result.stdout
    for root, _dirs, files in os.walk(site.state_dir):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                assert b"very-private-hash" not in handle.read()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_file_others_can_read_is_refused_like_ssh_and_the_release_waits(site, mode):
    write_key(site, (AUTH_KEY + "\n").encode(), mode)
    result = push(site)
    assert "can be read by others (mode {:04o}): chmod 600".format(mode) in result.stdout
    assert site.fake.requests == []
    assert_key_nowhere(site, result.stdout)
    kept_once_fixed(site)


def test_an_empty_key_file_says_so_and_not_that_the_platform_is_down(site):
    write_key(site, b"\n")
    result = push(site)
    assert "is empty: write the platform's auth_key there" in result.stdout
    assert "when the platform answers" not in result.stdout
    assert "once that is fixed" in result.stdout
    kept_once_fixed(site)


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "directory"])
def test_a_key_file_that_is_not_a_file_neither_hangs_nor_floods(site, tmp_path, target):
    if target == "fifo":
        path = str(tmp_path / "fifo")
        os.mkfifo(path, 0o600)
    elif target == "directory":
        path = str(tmp_path / "keydir")
        os.mkdir(path, 0o700)
    else:
        path = target
    site.config["codo"]["auth_key_file"] = path
    site.write_config()
    result = push(site)  # the run has a 60 s timeout: a blocking open or an endless read fails it
    assert "not a regular file" in result.stdout or "can be read by others" in result.stdout
    assert [entry["tag"] for entry in site.spool("pending")] == [RELEASE]


def test_a_huge_key_file_is_refused_unread(site):
    write_key(site, b"a" * (1 << 20))
    result = push(site)
    assert "too long to hold a key" in result.stdout


def test_the_key_is_read_once_a_push(site):
    # Two releases in one push: one key read; swapping the file mid-push cannot split them.
    result = site.run_hook(
        "post-receive", [new_tag_line("release-dbtt-1"), new_tag_line("release-dbtt-2")]
    )
    assert result.returncode == 0
    assert [task.args["TAG"] for task in site.fake.tasks] == ["release-dbtt-1", "release-dbtt-2"]
    cookies = {request.cookies.get("auth_key") for request in site.fake.requests}
    assert cookies == {AUTH_KEY}
    assert_key_nowhere(site, result.stdout)


def test_a_key_in_the_environment_is_checked_like_the_file(site):
    result = push(site, CODO_AUTH_KEY=AUTH_KEY + "\nX: y")
    assert "$CODO_AUTH_KEY does not hold a platform key" in result.stdout
    assert_key_nowhere(site, result.stdout)


def test_check_config_warns_of_a_key_file_others_can_read(site):
    write_key(site, (AUTH_KEY + "\n").encode(), 0o644)
    result = site.admin("check-config", site.config_path)
    assert result.returncode == 0
    assert "warning: the platform key" in result.stdout and "can be read by others" in result.stdout
    assert_key_nowhere(site, result.stdout)

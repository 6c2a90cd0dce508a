"""The spool is the hook's alone: another local user, a careless umask, a planted link or a full disk
neither sends the key elsewhere nor loses or doubles a release."""

import json
import os
import shutil
import stat
import subprocess
import tempfile

import pytest
from conftest import PROJECT, assert_key_nowhere, new_tag_line

RELEASE = "release-dbtt-1"
NOBODY = 65534


def push_down(site, tag=RELEASE):
    """A release pushed while the platform is down: one pending entry."""
    site.fake.stop()
    result = site.run_hook("post-receive", [new_tag_line(tag)])
    assert "spooled" in result.stdout, result.stdout
    site.fake.start()
    return result


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def evil(other_platform):
    """Where an attacker wants the key to go."""
    return other_platform


@pytest.fixture
def shared_dir():
    """A directory another local user can reach, as /var/opt is."""
    path = tempfile.mkdtemp(prefix="codo-hostile-", dir="/tmp")
    os.chmod(path, 0o755)
    os.mkdir(os.path.join(path, "mallory"), 0o755)
    os.chown(os.path.join(path, "mallory"), NOBODY, NOBODY)  # the attacker's own home
    yield path
    shutil.rmtree(path)


def write_as_nobody(path, payload):
    """Another local user writes a file: `nobody`, through setpriv, with nothing but sh."""
    subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "sh",
            "-c",
            'cat > "$1"',
            "sh",
            path,
        ],
        input=json.dumps(payload),
        check=True,
        capture_output=True,
        text=True,
    )


def entry_like(site, entry_id, config_path):
    return {
        "id": entry_id,
        "old": "0" * 40,
        "new": "1" * 40,
        "ref": "refs/tags/release-dbtt-666",
        "tag": "release-dbtt-666",
        "project": PROJECT,
        "user": "mallory",
        "stage": "post-receive",
        "config_path": config_path,
        "rule": 1,
        "attempts": 0,
        "state": "pending",
    }


def evil_config(site, evil, state_dir):
    config = json.loads(json.dumps(site.config))
    config["codo"]["url"] = evil.url
    config["state_dir"] = state_dir
    return config


def test_a_hook_under_umask_0_makes_nothing_others_can_write(site):
    previous = os.umask(0)
    try:
        push_down(site)
    finally:
        os.umask(previous)
    spool = os.path.join(site.state_dir, "spool")
    assert mode(site.state_dir) == 0o750
    for state in ("pending", "inflight", "uncertain", "failed", "sent", "tmp"):
        assert mode(os.path.join(spool, state)) == 0o750
    for root, _dirs, files in os.walk(site.state_dir):
        for name in files:
            assert not mode(os.path.join(root, name)) & 0o022, name


def test_an_entry_planted_by_another_user_is_ignored_and_the_key_stays(site, evil, shared_dir):
    state_dir = site.state_dir = os.path.join(shared_dir, "state")
    site.config["state_dir"] = state_dir
    site.write_config()
    push_down(site)  # the hook makes the spool
    pending = os.path.join(state_dir, "spool", "pending")
    os.chmod(pending, 0o777)  # a careless admin
    os.chmod(os.path.join(state_dir, "spool"), 0o755)
    os.chmod(state_dir, 0o755)
    planted_config = os.path.join(shared_dir, "mallory", "evil.json")
    entry_id = "1000000000000000-1-abcdef"
    write_as_nobody(planted_config, evil_config(site, evil, state_dir))
    write_as_nobody(
        os.path.join(pending, entry_id + ".json"), entry_like(site, entry_id, planted_config)
    )
    result = site.flush()
    assert evil.requests == []
    assert [task.args["TAG"] for task in site.fake.tasks] == [RELEASE], result.stdout
    assert "not written by the hook" in result.stdout
    status = site.admin("status", "--state-dir", state_dir)
    assert (
        f"ignored   {os.path.join(pending, entry_id + '.json')}: belongs to uid {NOBODY}"
        in status.stdout
    )
    assert_key_nowhere(site, result.stdout, status.stdout)


def test_an_entry_naming_a_config_another_user_wrote_is_not_sent(site, evil, shared_dir):
    planted_config = os.path.join(shared_dir, "mallory", "evil.json")
    write_as_nobody(planted_config, evil_config(site, evil, site.state_dir))
    push_down(site)
    (entry,) = site.spool("pending")
    path = os.path.join(site.state_dir, "spool", "pending", entry["id"] + ".json")
    with open(path, "w") as handle:
        json.dump(dict(entry, config_path=planted_config), handle)
    result = site.flush()
    assert evil.requests == [] and site.fake.requests == []
    (failed,) = site.spool("failed")
    assert f"belongs to uid {NOBODY}" in failed["last_error"] and "not sent" in failed["last_error"]
    assert_key_nowhere(site, result.stdout)


def test_an_entry_naming_a_link_to_a_config_is_not_sent(site, evil, tmp_path):
    config = tmp_path / "evil.json"
    config.write_text(json.dumps(evil_config(site, evil, site.state_dir)))
    link = tmp_path / "link.json"
    link.symlink_to(config)
    push_down(site)
    (entry,) = site.spool("pending")
    with open(
        os.path.join(site.state_dir, "spool", "pending", entry["id"] + ".json"), "w"
    ) as handle:
        json.dump(dict(entry, config_path=str(link)), handle)
    site.flush()
    assert evil.requests == []
    assert "a symbolic link" in site.spool("failed")[0]["last_error"]


def test_an_entry_naming_a_config_of_another_spool_is_not_sent(site, evil, tmp_path):
    config = tmp_path / "other.json"
    config.write_text(json.dumps(evil_config(site, evil, str(tmp_path / "elsewhere"))))
    push_down(site)
    (entry,) = site.spool("pending")
    with open(
        os.path.join(site.state_dir, "spool", "pending", entry["id"] + ".json"), "w"
    ) as handle:
        json.dump(dict(entry, config_path=str(config)), handle)
    site.flush()
    assert evil.requests == []
    assert "not in this spool" in site.spool("failed")[0]["last_error"]


def test_a_link_planted_in_the_spool_is_not_followed(site, tmp_path):
    push_down(site)
    (entry,) = site.spool("pending")
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(dict(entry, id="1000000000000000-1-aaaaaa")))
    link = os.path.join(site.state_dir, "spool", "pending", "1000000000000000-1-aaaaaa.json")
    os.symlink(outside, link)
    result = site.flush()
    assert [task.args["TAG"] for task in site.fake.tasks] == [RELEASE]  # the real one, once
    assert os.path.islink(link) and outside.exists()
    status = site.admin("status", "--state-dir", site.state_dir)
    assert f"ignored   {link}: a symbolic link" in status.stdout
    assert "Traceback" not in result.stdout + status.stdout


@pytest.mark.parametrize(
    "spoil, why",
    [
        (lambda path: os.chmod(path, 0o666), "others may write it"),
        (lambda path: os.link(path, path + ".hardlink"), "other names"),
        (lambda path: open(path, "w").write("[1, 2]"), "not a spool entry"),
        (lambda path: open(path, "w").write("{" * 50000), "not a spool entry"),
    ],
    ids=["world-writable", "hard link", "not an entry", "deep JSON"],
)
def test_an_entry_the_hook_could_not_have_written_is_ignored_and_listed(site, spoil, why):
    push_down(site)
    (entry,) = site.spool("pending")
    spoil(os.path.join(site.state_dir, "spool", "pending", entry["id"] + ".json"))
    result = site.flush()
    assert site.fake.requests == []
    status = site.admin("status", "--state-dir", site.state_dir)
    assert why in status.stdout
    assert "Traceback" not in result.stdout + result.stderr + status.stdout + status.stderr


def test_a_state_directory_others_can_write_is_not_used_as_a_spool(site):
    os.makedirs(site.state_dir)
    os.chmod(site.state_dir, 0o777)
    site.fake.stop()
    result = site.run_hook("post-receive", [new_tag_line(RELEASE)])
    assert "NOT kept" in result.stdout and "chmod 750" in result.stdout
    assert not os.path.exists(os.path.join(site.state_dir, "spool", "pending"))


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=False
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield str(mount)
    subprocess.run(["umount", str(mount)], check=False)


def fill(directory):
    """Fill the disk with page-sized files; returns their paths."""
    fillers = []
    while True:
        path = os.path.join(directory, f"filler-{len(fillers)}")
        try:
            with open(path, "wb") as handle:
                handle.write(b"x" * 4096)
        except OSError:
            if os.path.exists(path):
                os.unlink(path)
            return fillers
        fillers.append(path)


def test_a_full_disk_after_the_journal_keeps_the_release_pending_not_uncertain(site, small_disk):
    state_dir = site.state_dir = os.path.join(small_disk, "state")
    site.config["state_dir"] = state_dir
    site.write_config()
    for directory in ["", "spool"] + [
        f"spool/{s}" for s in ("pending", "inflight", "uncertain", "failed", "sent", "tmp")
    ]:
        os.mkdir(os.path.join(state_dir, directory), 0o750)
    fillers = fill(small_disk)
    os.unlink(fillers.pop())  # room for the journal, and for nothing after it
    site.fake.stop()
    result = site.run_hook("post-receive", [new_tag_line(RELEASE)])
    assert "Traceback" not in result.stdout + result.stderr
    assert f"{RELEASE} spooled" in result.stdout
    assert [e["tag"] for e in site.spool("pending")] == [RELEASE] and site.spool("uncertain") == []
    for path in fillers:
        os.unlink(path)
    site.fake.start()
    assert site.flush().returncode == 0
    assert site.flush().returncode == 0
    assert [task.args["TAG"] for task in site.fake.tasks] == [RELEASE]


def test_a_disk_too_full_for_the_journal_says_the_release_is_not_kept(site, small_disk):
    site.config["state_dir"] = site.state_dir = os.path.join(small_disk, "state")
    site.write_config()
    fill(small_disk)
    site.fake.stop()
    result = site.run_hook("post-receive", [new_tag_line(RELEASE)])
    assert "Traceback" not in result.stdout + result.stderr
    assert "NOT released and NOT kept" in result.stdout

"""check-config --probe: the platform asked, with the configured key, before a release needs it."""

import time

from conftest import PROJECT, assert_key_nowhere
from fakes.fake_codo import make_auth_key


def probe(site):
    result = site.admin("check-config", "--probe", site.config_path)
    assert "Traceback" not in result.stdout + result.stderr
    assert_key_nowhere(site, result.stdout)
    return result


def use_key(site, key):
    with open(site.key_file, "w") as handle:
        handle.write(key)


def test_a_config_the_platform_agrees_with_passes(site):
    result = probe(site)
    assert result.returncode == 0 and "OK" in result.stdout
    assert not [r for r in site.fake.requests if r.method == "POST"]  # asks, never submits


def test_a_key_the_platform_refuses_is_a_problem(site):
    use_key(site, make_auth_key(user_id=9))
    result = probe(site)
    assert result.returncode == 2 and "rejected the auth key (HTTP 401)" in result.stdout


def test_a_key_expired_is_an_error_and_one_near_expiry_a_warning(site):
    import base64
    import json

    head, _payload, sig = site.fake.auth_key.split(".")

    def key_expiring(seconds):
        payload = {
            "exp": int(time.time() + seconds),
            "data": {"user_id": 1, "username": "githook", "nickname": "githook"},
        }
        part = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
        return ".".join([head, part, sig])

    site.serve_key(None)  # any well-formed key with a user_id, like the real server
    use_key(site, key_expiring(-86400))
    result = probe(site)
    assert result.returncode == 2 and "the platform key expired on" in result.stdout
    use_key(site, key_expiring(3 * 86400))
    result = probe(site)
    assert (
        result.returncode == 0
        and "warning: the platform key expires on" in result.stdout
        and "in 2 day(s)" in result.stdout
    )


def test_an_unknown_template_a_missing_group_and_an_unsupplied_name_are_each_named(site):
    site.fake.templates[40] = {
        "steps": [{"group": 1, "args": "TAG GIT_URL APP_NAME BRANCH"}, {"group": 2, "args": "TAG"}]
    }
    rules = site.config["projects"][PROJECT]["rules"]
    rules[0]["template_id"] = 99
    rules[1].update(template_id=40, hosts={"1": ["118.25.0.10"], "3": ["118.25.0.11"]})
    site.write_config()
    result = probe(site)
    assert result.returncode == 2
    lines = result.stdout.split("\n")
    assert any("rules[0]: the platform has no template 99" in line for line in lines)
    assert any(
        "rules[1]: host group 3 is not one of template 40's step groups (1, 2)" in line
        for line in lines
    )
    assert any(
        "rules[1]: template 40's steps use BRANCH, which the rule does not supply" in line
        for line in lines
    )


def test_a_submitter_the_key_cannot_see_is_a_warning_about_settling(site):
    site.config["projects"][PROJECT]["submitter"] = "someone-else"
    site.write_config()
    result = probe(site)
    assert result.returncode == 0
    assert (
        "flush cannot settle uncertain releases: the key cannot see the hook's tasks"
        in result.stdout
    )


def test_a_platform_that_is_down_is_a_problem_not_a_crash(site):
    site.fake.stop()
    result = probe(site)
    assert result.returncode == 2 and "could not be asked" in result.stdout


def test_status_repeats_the_keys_expiry(site):
    result = site.admin("status", "--config", site.config_path)
    assert "the platform key expires on 2100-01-01" in result.stdout
    assert_key_nowhere(site, result.stdout)

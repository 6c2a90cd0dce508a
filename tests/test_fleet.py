"""The fleet's table and what must match (roles/codo_hooks/library/codo_hooks_fleet.py, run the way
Ansible runs it, on codo_hooks_status results), and playbooks/status.yml's two tasks through
ansible-playbook on localhost: the table printed, the node that differs named."""

import json
import os
import subprocess
import sys

import pytest
from ansible_module import run_module
from conftest import PROGRAM_MODULES
from test_status_module import Node, checkout_program

PROGRAM = "a" * 64
CONFIGS = "c" * 64
NOW = 1767225600.0  # 2026-01-01
SPOOL = {"pending": 0, "uncertain": 0, "failed": 0, "inflight": 0, "sent": 3, "ignored": 0}


def read(**changes):
    """A codo_hooks_status result of a node that matches."""
    result = {
        "changed": False,
        "method": "gitaly",
        "now": NOW,
        "errors": [],
        "program": PROGRAM,
        "program_missing": [],
        "configs": CONFIGS,
        "configs_count": 4,
        "expected_configs": CONFIGS,
        "projects": 4,
        "hooked": 4,
        "elsewhere": [],
        "differences": 0,
        "differing": [],
        "spool": SPOOL,
        "version": None,
        "oldest_s": None,
        "key_expires": None,
        "last_run": NOW - 300,
        "last_run_from": "hook.log",
        "last_flush": None,
        "status_error": None,
    }
    result.update(changes)
    return result


def lines(result):
    return result["table"].split("\n")


def below(result):
    """The lines under the table: the notes, then the differences."""
    table = lines(result)
    return table[table.index("") + 1 :] if "" in table else []


def fleet(nodes, **args):
    rc, result, _ = run_module(
        "codo_hooks_fleet", dict(args, nodes=nodes, program=args.get("program", PROGRAM))
    )
    return rc, result


def test_nodes_that_match_pass_with_one_aligned_line_each():
    rc, result = fleet({"gitaly-1": read(), "gitaly-2": read(), "gitaly-3": read()})
    assert rc == 0 and result["mismatched"] == [] and result["changed"] is False
    header, *rows = lines(result)[:4]
    assert header.split() == [
        "node",
        "method",
        "version",
        "program",
        "configs",
        "projects",
        "pending",
        "uncertain",
        "failed",
        "oldest",
        "key",
        "expires",
        "last",
        "run",
    ]
    assert rows[0].split() == [
        "gitaly-1",
        "gitaly",
        "-",
        "aaaaaaaaaaaa",
        "cccccccccccc",
        "4",
        "0",
        "0",
        "0",
        "-",
        "-",
        "5m",
        "ago",
    ]
    # Left-aligned columns start where their title does; right-aligned ones end where it ends.
    for row in rows:
        assert row.index("aaaaaaaaaaaa") == header.index("program")
        assert row.index("cccccccccccc") == header.index("configs")
        assert len(row) == len(header.rstrip())
    assert result["msg"].startswith(
        "All 3 node(s) match: hook program aaaaaaaaaaaa (the one this checkout installs)"
    )


def test_a_node_left_behind_is_named_alone_with_what_differs():
    behind = read(
        program="b" * 64,
        configs="d" * 64,
        differences=1,
        differing=["ops/dbtt: codo-release.json differs from the inventory"],
        hooked=3,
    )
    rc, result = fleet({"gitaly-1": read(), "gitaly-2": behind, "gitaly-3": read()})
    assert rc == 1 and result["failed"] is True
    assert result["mismatched"] == ["gitaly-2"]
    assert below(result) == [
        "gitaly-2: hook program bbbbbbbbbbbb is not the one this checkout installs (aaaaaaaaaaaa)",
        "gitaly-2: configs differ from the inventory in 1 project(s): "
        "ops/dbtt: codo-release.json differs from the inventory",
    ]
    assert "3/4" in lines(result)[2].split()
    assert result["msg"] == (
        "1 of 3 node(s) differ: gitaly-2. Bring them in line with "
        "ansible-playbook playbooks/deploy-hooks.yml --limit gitaly-2"
    )


def test_without_the_checkouts_program_the_one_most_nodes_run_is_the_reference():
    rc, result = fleet({"a": read(), "b": read(program="b" * 64), "c": read()}, program="")
    assert rc == 1 and result["mismatched"] == ["b"]
    assert "is not the one most nodes run (aaaaaaaaaaaa)" in below(result)[0]
    rc, result = fleet({"a": read(), "b": read(program="b" * 64)}, program="")
    assert rc == 1 and result["mismatched"] == ["a", "b"]


def test_a_group_that_must_match_names_the_nodes_that_differ_from_most_of_it():
    # Each node holds what the inventory gives it, but a host_vars file set geo-2 apart.
    nodes = {
        "geo-1": read(),
        "geo-2": read(configs="e" * 64, expected_configs="e" * 64),
        "geo-3": read(),
        "other": read(configs="f" * 64, expected_configs="f" * 64),
    }
    groups = {"geo": ["geo-1", "geo-2", "geo-3"], "all": list(nodes)}
    rc, result = fleet(nodes, match_groups=["geo"], groups=groups)
    assert rc == 1 and result["mismatched"] == ["geo-2"]
    assert below(result) == [
        "geo-2: configs eeeeeeeeeeee differ from the cccccccccccc held by 2 other node(s) of group geo"
    ]
    rc, _ = fleet(nodes, match_groups=[], groups=groups)
    assert rc == 0


def test_a_group_with_no_majority_names_every_member():
    nodes = {"a": read(), "b": read(configs="e" * 64, expected_configs="e" * 64)}
    rc, result = fleet(nodes, match_groups=["pair"], groups={"pair": ["a", "b"]})
    assert rc == 1 and result["mismatched"] == ["a", "b"]


def test_an_unknown_group_fails_with_one_line_naming_it():
    rc, result = fleet({"a": read()}, match_groups=["gitaly_cluster"], groups={"all": ["a"]})
    assert rc == 1 and result["mismatched"] == []
    assert below(result) == [
        "codo_hooks_status_match_groups names gitaly_cluster, which is no group of the inventory"
    ]


def test_nodes_not_reached_or_not_read_are_named_with_why():
    nodes = {
        "up": read(),
        "down": None,
        "broken": {
            "failed": True,
            "msg": "Projects with neither id nor disk_path: ops/x.\nGive...",
        },
        "no-gitaly": read(errors=["cannot read Gitaly's config /x: is this a Gitaly node?"]),
    }
    rc, result = fleet(nodes)
    assert rc == 1 and result["mismatched"] == ["down", "broken", "no-gitaly"]
    assert below(result)[0].startswith("down: not reached")
    assert (
        below(result)[1]
        == "broken: not read: Projects with neither id nor disk_path: ops/x. Give..."
    )
    assert (
        below(result)[2]
        == "no-gitaly: cannot be read: cannot read Gitaly's config /x: is this a Gitaly node?"
    )
    assert [line.split()[:2] for line in lines(result)[2:4]] == [["down", "not"], ["broken", "not"]]


def test_the_hooks_own_figures_show_and_notes_do_not_fail():
    rc, result = fleet(
        {
            "a": read(
                version="1.4.0",
                key_expires=NOW + 86400,
                oldest_s=7300,
                spool=dict(SPOOL, pending=2, failed=1),
            ),
            "b": read(status_error="/opt/codo-hooks/codo_release_hook.py status exited 1: oops"),
        }
    )
    assert rc == 0
    assert lines(result)[1].split()[2] == "1.4.0"
    assert lines(result)[1].split()[9:11] == ["2h", "2026-01-02"]
    assert below(result) == [
        "a: the platform key expires on 2026-01-02",
        "a: 1 release(s) failed: fix the config, then flush --include-failed",
        "b: spool not read: /opt/codo-hooks/codo_release_hook.py status exited 1: oops",
    ]


def test_what_a_node_reports_stays_in_its_cell():
    hostile = read(version="1.0\n: x", method="gitaly\x1b[31m")
    rc, result = fleet({"a": hostile, "b\nforged: line": read()})
    assert rc == 0 and len(lines(result)) == 3
    assert all(
        "\n" not in line and "\x1b" not in line and ": " not in line for line in lines(result)[:3]
    )
    rc, result = fleet({"b\nforged: line": read(program="b" * 64)})
    assert rc == 1 and result["mismatched"] == ["b\nforged: line"]
    assert below(result) == [
        "b?forged??line: hook program bbbbbbbbbbbb is not the one this checkout installs (aaaaaaaaaaaa)"
    ]
    assert "\n" not in result["msg"]


PLAYBOOK = """\
- name: Read the node and print the fleet's table
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Read the installed hook, its configs and its spool
      codo_hooks_status: "{{ status_args }}"
      register: node_status
      failed_when: false
    - name: Print the fleet's table and fail naming the nodes that differ
      codo_hooks_fleet:
        nodes: "{{ dict(ansible_play_hosts_all | zip(ansible_play_hosts_all | map('extract', hostvars)
          | map(attribute='node_status', default=none))) }}"
        groups: "{{ groups }}"
      run_once: true
"""


def play(node, tmp_path, *flags):
    role = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "roles", "codo_hooks"
    )
    playbook = tmp_path / "status.yml"
    playbook.write_text(PLAYBOOK)
    extra = tmp_path / "extra.json"
    args = dict(
        node.args(),
        install_dir=str(node.install_dir),
        state_dir=str(node.state_dir),
        modules=PROGRAM_MODULES,
    )
    extra.write_text(
        json.dumps({"status_args": args, "ansible_python_interpreter": sys.executable})
    )
    env = dict(
        os.environ,
        ANSIBLE_LIBRARY=os.path.join(role, "library"),
        ANSIBLE_ACTION_PLUGINS=os.path.join(role, "action_plugins"),
        ANSIBLE_MODULE_UTILS=os.path.join(role, "module_utils"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
    )
    return subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
            "-i",
            "localhost,",
            "-e",
            "@" + str(extra),
            *flags,
            str(playbook),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.fixture
def node(tmp_path):
    if os.geteuid() != 0:
        pytest.skip(
            "the configs are root-owned and status runs as the git user, as on a GitLab node"
        )
    made = Node(tmp_path / "node")
    made.install()
    return made


def test_the_play_prints_the_table_at_any_verbosity_and_names_a_node_with_another_program(
    node, tmp_path
):
    run = play(node, tmp_path, "--check")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "localhost  files" in run.stdout and digest_short() in run.stdout
    assert "All 1 node(s) match" in run.stdout and "changed=0" in run.stdout
    module = node.install_dir / "codo_release" / "stages.py"
    module.write_text(module.read_text() + "# an older copy\n")
    run = play(node, tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    assert (
        "localhost: hook program" in run.stdout
        and "is not the one this checkout installs" in run.stdout
    )
    assert "1 of 1 node(s) differ: localhost." in run.stdout


def digest_short():
    return checkout_program()[:12]

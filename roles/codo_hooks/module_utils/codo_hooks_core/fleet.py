"""The fleet's status: every node's codo_hooks_status result in one table, and the nodes that differ.

Used by action_plugins/codo_hooks_fleet.py on the control node (and library/codo_hooks_fleet.py,
its documented module, which runs the same code anywhere). What must match:

  - every node runs the hook program that this checkout's playbooks/deploy-hooks.yml installs;
  - every node's installed configs are those the inventory gives it (so nodes the inventory gives
    the same projects, Gitaly Cluster replicas or Geo sites, hold the same configs);
  - the nodes of each group named in codo_hooks_status_match_groups hold the same configs, whatever
    the inventory gives them (a host_vars file that sets one replica apart is caught too).

Python 3.6+, standard library only.
"""

import collections
import re
import time

from ansible.module_utils.codo_hooks_core.digest import short

COLUMNS = (
    ("node", "<"),
    ("method", "<"),
    ("version", "<"),
    ("program", "<"),
    ("configs", "<"),
    ("projects", ">"),
    ("pending", ">"),
    ("uncertain", ">"),
    ("failed", ">"),
    ("oldest", ">"),
    ("key expires", "<"),
    ("last run", ">"),
)
# What a cell may show: a table line must stay one line, aligned, and plain in YAML output.
UNSHOWN = re.compile(r"[^\w.@/+~=-]")
CELL_WIDTH = 40
KEY_WARNING_S = 14 * 86400
SHOWN_LINES = 5
NOT_READ = "not read"


def cell(value):
    if value is None or value == "":
        return "-"
    return UNSHOWN.sub("?", str(value))[:CELL_WIDTH]


def age(seconds):
    """5s, 12m, 3h, 9d."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    for unit, size, below in (("s", 1, 120), ("m", 60, 120 * 60), ("h", 3600, 48 * 3600)):
        if seconds < below:
            return "{}{}".format(seconds // size, unit)
    return "{}d".format(seconds // 86400)


def day(epoch):
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%d", time.gmtime(min(max(epoch, 0), 253402300799)))


def was_read(result):
    return isinstance(result, dict) and "program" in result and "configs" in result


def projects_cell(result):
    if result["hooked"] == result["projects"]:
        return result["projects"]
    return "{}/{}".format(result["hooked"], result["projects"])


def spooled(result, state):
    spool = result.get("spool")
    return spool.get(state) if isinstance(spool, dict) else None


def row(name, result):
    if not was_read(result):
        return [cell(name), NOT_READ] + ["-"] * (len(COLUMNS) - 2)
    since = None
    if result.get("last_run") is not None and result.get("now") is not None:
        since = result["now"] - result["last_run"]
    return [
        cell(name),
        cell(result.get("method")),
        cell(result.get("version")),
        short(result.get("program")) if result.get("program") else "missing",
        short(result.get("configs")) if result.get("configs") else "none",
        cell(projects_cell(result)),
        cell(spooled(result, "pending")),
        cell(spooled(result, "uncertain")),
        cell(spooled(result, "failed")),
        age(result.get("oldest_s")),
        cell(day(result.get("key_expires"))),
        age(since) + " ago" if since is not None else "-",
    ]


def table(rows):
    """Aligned lines: a header, then a line per row; no trailing spaces."""
    lines = [[title for title, _ in COLUMNS]] + rows
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return [
        "  ".join(
            text.rjust(width) if align == ">" else text.ljust(width)
            for text, width, (_, align) in zip(line, widths, COLUMNS)
        ).rstrip()
        for line in lines
    ]


# --- what must match ---------------------------------------------------------------


def unread_reason(result):
    if result is None:
        return "not reached: unreachable, or its play stopped before the status was read"
    if isinstance(result, dict) and result.get("msg"):
        return "not read: {}".format(one_line(result["msg"]))
    return "not read"


def one_line(text, limit=300):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Reference:
    """The program every node must run: this checkout's, or (without it) the one most nodes run."""

    def __init__(self, nodes, program):
        self.digest, self.whose = program, "the one this checkout installs"
        if program:
            return
        self.whose = "the one most nodes run"
        ranked = collections.Counter(
            result["program"] for result in nodes.values() if was_read(result) and result["program"]
        ).most_common(2)
        if ranked and (len(ranked) == 1 or ranked[0][1] > ranked[1][1]):
            self.digest = ranked[0][0]
        elif ranked:
            self.digest, self.whose = None, "none is run by most nodes"

    def problem(self, result):
        if not result.get("program"):
            missing = ", ".join(result.get("program_missing") or []) or "its files"
            return "no hook program installed (missing {})".format(missing)
        if result["program"] == self.digest:
            return None
        if self.digest is None:
            return "hook program {}: the nodes run different ones and {}".format(
                short(result["program"]), self.whose
            )
        return "hook program {} is not {} ({})".format(
            short(result["program"]), self.whose, short(self.digest)
        )


def configs_problem(result):
    differing = result.get("differing") or []
    count = result.get("differences") or len(differing)
    if not count and result.get("configs") == result.get("expected_configs"):
        return None
    if not count:
        return "configs {} are not the inventory's {}".format(
            short(result.get("configs")), short(result.get("expected_configs"))
        )
    shown = "; ".join(one_line(line, 200) for line in differing[:SHOWN_LINES])
    more = " (and {} more)".format(count - SHOWN_LINES) if count > SHOWN_LINES else ""
    return "configs differ from the inventory in {} project(s): {}{}".format(count, shown, more)


def node_problems(result, reference):
    if not was_read(result):
        return [unread_reason(result)]
    problems = ["cannot be read: {}".format(one_line(e)) for e in result.get("errors") or []]
    problems.append(reference.problem(result))
    if not result.get("errors"):
        problems.append(configs_problem(result))
    return [problem for problem in problems if problem]


def majority_problems(group, members, nodes):
    """The members whose configs differ from those most of the group hold (every member when no
    digest is held by more members than each other one)."""
    held = collections.Counter(nodes[name].get("configs") for name in members)
    ranked = held.most_common()
    if len(ranked) < 2:
        return []
    common, count = ranked[0]
    if count == ranked[1][1]:
        return [
            (
                name,
                "configs {} differ from other nodes of group {}, and no configs are held by "
                "most of its nodes".format(short(nodes[name].get("configs")), group),
            )
            for name in members
        ]
    return [
        (
            name,
            "configs {} differ from the {} held by {} other node(s) of group {}".format(
                short(nodes[name].get("configs")), short(common), count, group
            ),
        )
        for name in members
        if nodes[name].get("configs") != common
    ]


def group_problems(nodes, match_groups, groups):
    """((node, reason) pairs, lines about the groups themselves)."""
    found, unknown = [], []
    for group in match_groups:
        if group not in groups:
            unknown.append(
                "codo_hooks_status_match_groups names {}, which is no group of the inventory".format(
                    cell(group)
                )
            )
            continue
        members = [name for name in groups[group] if name in nodes and was_read(nodes[name])]
        found.extend(majority_problems(group, members, nodes))
    return found, unknown


def notes(name, result):
    """Worth a look, not a mismatch: the spool unread, waiting releases, the key's expiry."""
    if not was_read(result):
        return []
    found = []
    if result.get("status_error"):
        found.append("{}: spool not read: {}".format(name, one_line(result["status_error"])))
    expires, now = result.get("key_expires"), result.get("now")
    if expires is not None and now is not None and expires - now < KEY_WARNING_S:
        verb = "expired" if expires <= now else "expires"
        found.append("{}: the platform key {} on {}".format(name, verb, day(expires)))
    if spooled(result, "failed"):
        found.append(
            "{}: {} release(s) failed: fix the config, then flush --include-failed".format(
                name, spooled(result, "failed")
            )
        )
    return found


def report(nodes, program="", match_groups=(), groups=None):
    """The table, what differs and the verdict.

    nodes: {host: codo_hooks_status result, or None when not reached}, in inventory order;
    program: this checkout's program digest ("" to compare the nodes with each other only);
    match_groups: group names whose nodes must hold the same configs; groups: {group: [hosts]}.
    Returns {"table": [lines: the table, the notes, the problems], "verdict": a line,
    "mismatched": [hosts], "failed": bool}.
    """
    reference = Reference(nodes, program)
    by_node = collections.OrderedDict(
        (name, node_problems(result, reference)) for name, result in nodes.items()
    )
    grouped, unknown = group_problems(nodes, match_groups, groups or {})
    for name, problem in grouped:
        by_node[name].append(problem)
    problems = ["{}: {}".format(cell(name), p) for name, found in by_node.items() for p in found]
    problems += unknown
    mismatched = [name for name, found in by_node.items() if found]
    noted = [line for name, result in nodes.items() for line in notes(cell(name), result)]
    lines = table([row(name, result) for name, result in nodes.items()])
    if noted or problems:
        lines += [""] + noted + problems
    return {
        "table": lines,
        "verdict": verdict(nodes, mismatched, unknown, reference, match_groups),
        "mismatched": mismatched,
        "failed": bool(problems),
    }


def verdict(nodes, mismatched, unknown, reference, match_groups):
    if mismatched:
        return (
            "{} of {} node(s) differ: {}. Bring them in line with "
            "ansible-playbook playbooks/deploy-hooks.yml --limit {}".format(
                len(mismatched),
                len(nodes),
                ", ".join(cell(name) for name in mismatched),
                ",".join(cell(name) for name in mismatched),
            )
        )
    if unknown:
        return "The nodes were not compared as asked: fix codo_hooks_status_match_groups"
    groups = " and alike in group(s) {}".format(", ".join(match_groups)) if match_groups else ""
    return (
        "All {} node(s) match: hook program {} ({}), configs as the inventory gives them{}".format(
            len(nodes), short(reference.digest), reference.whose, groups
        )
    )


ARGUMENT_SPEC = dict(
    nodes=dict(type="dict", required=True),
    program=dict(type="str", default=""),
    match_groups=dict(type="list", elements="str", default=[]),
    groups=dict(type="dict", default={}),
)


def result_of(params):
    """The task's result from its (validated) arguments; failed when any node differs.

    msg is the verdict, one line; table the lines as one text, which YAML output (the project's
    ansible.cfg) prints as a block, aligned."""
    found = report(params["nodes"], params["program"], params["match_groups"], params["groups"])
    return dict(
        changed=False,
        failed=found["failed"],
        msg=found["verdict"],
        table="\n".join(found["table"]),
        mismatched=found["mismatched"],
    )

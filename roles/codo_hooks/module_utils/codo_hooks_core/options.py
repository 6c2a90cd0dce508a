"""The arguments codo_hooks_projects and codo_hooks_status share: the projects and where the node
keeps them, and what desired.work_out and sync read from them.

Both modules locate the installed configs with the same code and the same arguments, so the
status of a node is read exactly where the role wrote it. Python 3.6+, standard library only.
"""

from ansible.module_utils.codo_hooks_core import config

STAGES = ["pre-receive", "update", "post-receive"]

ARGUMENT_SPEC = dict(
    projects=dict(type="list", elements="dict", required=True, options=config.PROJECT),
    method=dict(type="str", choices=["files", "gitaly", "global"], default="files"),
    stages=dict(
        type="list", elements="str", choices=STAGES, default=["pre-receive", "post-receive"]
    ),
    hook=dict(type="path", required=True),
    retired_hooks=dict(type="list", elements="path", default=[]),
    codo=dict(type="dict", required=True),
    settings=dict(type="dict", default={}),
    submitter=dict(type="str", default="githook"),
    executor=dict(type="str", default="githook"),
    details=dict(type="str", default="git hook auto exec"),
    cluster=dict(type="bool", default=False),
    repositories_root=dict(type="path", default="/var/opt/gitlab/git-data/repositories"),
    global_dir=dict(type="str", default=""),
    gitaly_command=dict(type="path", default="/opt/gitlab/embedded/bin/gitaly"),
    gitaly_config=dict(type="path", default="/var/opt/gitlab/gitaly/config.toml"),
    gitaly_storage=dict(type="str", default="default"),
    git_user=dict(type="str", default="git"),
    git_group=dict(type="str", default="git"),
    located=dict(type="dict", default={}),
)


def node_want(params, states):
    """What sync.run compares the node with."""
    root = params["repositories_root"]
    return {
        "hook": params["hook"],
        "retired_hooks": [path for path in params["retired_hooks"] if path != params["hook"]],
        "link_name": config.LINK_NAME,
        "config_name": config.CONFIG_NAME,
        "index_name": config.INDEX_NAME,
        "method": params["method"],
        "stages": params["stages"],
        "repositories_root": root.rstrip("/") or "/",
        "global_dir": params["global_dir"],
        "gitaly": {
            "command": params["gitaly_command"],
            "config": params["gitaly_config"],
            "storage": params["gitaly_storage"],
        },
        "all_stages": list(config.ALL_STAGES),
        "git_user": params["git_user"],
        "git_group": params["git_group"],
        "dir_mode": "0750",
        "file_owner": "root",
        "file_group": params["git_group"],
        "config_mode": "0640",
        "projects": states,
    }

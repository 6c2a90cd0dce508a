# Shared code of the codo_hooks role's module (library/codo_hooks_projects.py) and action plugin.
# A subpackage name no other role uses: role-level module_utils share one namespace.

"""Test fakes: the CODO task platform (fake_codo) and Gitaly's hook runner (gitaly_runner)."""

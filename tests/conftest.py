"""Every test's fixtures, from tests/support: real servers on free loopback ports."""

pytest_plugins = [
    "tests.support.sealing",
    "tests.support.limits",
    "tests.support.backups",
    "tests.support.payloads",
    "tests.support.servers",
    "tests.support.kube",
    "tests.support.postgres",
    "tests.support.security",
    "tests.support.cli",
    "tests.support.identity",
    "tests.support.temporal_cluster",
    "tests.support.approvals",
]

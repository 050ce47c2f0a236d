"""Every test's fixtures, from tests/support: real servers on free loopback ports."""

pytest_plugins = [
    "tests.support.servers",
    "tests.support.kube",
    "tests.support.postgres",
    "tests.support.security",
    "tests.support.cli",
]

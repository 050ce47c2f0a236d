"""The error types activities raise, and which of them are worth retrying.

    PhasegateError
    ├── ConfigurationError   non-retryable: the plan points at something that cannot work
    │                        (a secret that does not exist, a flag file in a missing folder)
    ├── RouterError          non-retryable: the routing target refuses the change
    │                        (a flag file that is not flagd JSON)
    ├── MigrationError       non-retryable: a migration script failed, verification found a
    │                        mismatch, a migration is half-applied, a backup or a restore does
    │                        not match what was recorded
    ├── WritesAfterCutover   non-retryable: a restore would drop rows written after cutover;
    │                        a person decides (retry once they are saved, or skip on record)
    ├── WritesAtRisk         non-retryable: reverting the migration would lose live writes;
    │                        raised as an ApplicationError whose details are a
    │                        WritesAtRiskReport, and a person decides
    └── KubeRejected         non-retryable: the Kubernetes API server answered 4xx (invalid
                             manifest, forbidden, unknown kind) or a Deployment passed its
                             progress deadline; the message is the server's

Anything else (connection errors, timeouts, 5xx answers) is retried by the activity's
retry policy, declared next to the activity.
"""

from __future__ import annotations


class PhasegateError(Exception):
    """Base class for Phasegate's own failures."""


class ConfigurationError(PhasegateError):
    pass


class RouterError(PhasegateError):
    pass


class MigrationError(PhasegateError):
    pass


class WritesAfterCutover(PhasegateError):
    pass


class WritesAtRisk(PhasegateError):
    """Only its name is used: the restore raises an ApplicationError of this type with a
    `WritesAtRiskReport` as details."""


class KubeRejected(PhasegateError):
    pass


NON_RETRYABLE = [
    ConfigurationError.__name__,
    RouterError.__name__,
    MigrationError.__name__,
    WritesAfterCutover.__name__,
    WritesAtRisk.__name__,
    KubeRejected.__name__,
]

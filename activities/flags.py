"""The flagd router: exposure as an OpenFeature flag definition in a file the service watches.

The definition uses flagd's `fractional` operation in its shorthand form, which buckets users
by flag key and targeting key, so a user stays on the same variant as the share grows.
Writes are atomic (temp file + rename under a lock) so the service never reads half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from activities.errors import ConfigurationError, RouterError
from activities.limits import WorkerLimits
from schemas.routing_messages import RouterSnapshot
from schemas.targets import FlagdRouter

FLAGD_SCHEMA = "https://flagd.dev/schema/v0/flags.json"
# flagd weights are integers; thousandths of a percent give 0.001% resolution.
WEIGHT_SCALE = 1000
TOTAL_WEIGHT = 100 * WEIGHT_SCALE


def flag_definition(spec: FlagdRouter, weight: float, launch_id: str = "") -> dict[str, Any]:
    """`weight` percent of users on the canary variant, sticky per user (flagd's fractional)."""
    canary = round(weight * WEIGHT_SCALE)
    targeting = {
        "fractional": [
            [spec.canary_variant, canary],
            [spec.stable_variant, TOTAL_WEIGHT - canary],
        ]
    }
    return _definition(spec, spec.stable_variant, {"canaryWeight": weight}, launch_id, targeting)


def promoted_definition(spec: FlagdRouter, launch_id: str = "") -> dict[str, Any]:
    """Everyone on the new version, with no targeting left to evaluate."""
    metadata = {"canaryWeight": 100.0, "promoted": True}
    return _definition(spec, spec.canary_variant, metadata, launch_id)


def _definition(
    spec: FlagdRouter,
    default_variant: str,
    metadata: dict[str, Any],
    launch_id: str,
    targeting: dict[str, Any] | None = None,
) -> dict[str, Any]:
    definition: dict[str, Any] = {
        "state": "ENABLED",
        "variants": {
            spec.stable_variant: spec.stable_variant,
            spec.canary_variant: spec.canary_variant,
        },
        "defaultVariant": default_variant,
    }
    if targeting is not None:
        definition["targeting"] = targeting
    launch = {"launchId": launch_id} if launch_id else {}
    definition["metadata"] = {"managedBy": "phasegate", **metadata, **launch}
    return definition


def canary_weight(definition: dict[str, Any] | None, spec: FlagdRouter) -> float:
    """The share of users a definition sends to the canary variant, in percent."""
    if not definition or definition.get("state") != "ENABLED":
        return 0.0
    fractions = (definition.get("targeting") or {}).get("fractional")
    if not fractions:
        return 100.0 if definition.get("defaultVariant") == spec.canary_variant else 0.0
    weights = {str(item[0]): int(item[1]) if len(item) > 1 else 1 for item in fractions}
    total = sum(weights.values())
    return 100.0 * weights.get(spec.canary_variant, 0) / total if total else 0.0


class FlagdFileRouter:
    """Reads and writes one flag inside a flagd flag file, leaving any other flags alone.
    With `limits` (the worker's), only flag files inside their `files.flags` folders."""

    def __init__(self, limits: WorkerLimits | None = None) -> None:
        self._limits = limits

    def snapshot(self, spec: FlagdRouter) -> RouterSnapshot:
        with self._locked(spec):
            document = self._read(spec)
        flag = (document or {}).get("flags", {}).get(spec.flag_key)
        return RouterSnapshot(kind=spec.kind, existed=flag is not None, definition=flag)

    def current_weight(self, spec: FlagdRouter) -> float:
        """The share of users the flag file sends to the canary right now, in percent."""
        return canary_weight(self.snapshot(spec).definition, spec)

    def set_weight(self, spec: FlagdRouter, weight: float, launch_id: str) -> bool:
        return self._write_flag(spec, flag_definition(spec, weight, launch_id))

    def promote(self, spec: FlagdRouter, launch_id: str) -> bool:
        return self._write_flag(spec, promoted_definition(spec, launch_id))

    def restore(self, spec: FlagdRouter, snapshot: RouterSnapshot) -> bool:
        # A flag that did not exist goes back to 0%, not away: a flagd file watcher keeps
        # serving its last good state when a flag vanishes, which could leave users exposed.
        previous = snapshot.definition if snapshot.existed else flag_definition(spec, 0.0)
        assert previous is not None
        return self._write_flag(spec, previous)

    def _write_flag(self, spec: FlagdRouter, definition: dict[str, Any]) -> bool:
        with self._locked(spec):
            document = self._read(spec) or {"$schema": FLAGD_SCHEMA, "flags": {}}
            flags = document.setdefault("flags", {})
            if flags.get(spec.flag_key) == definition:
                return False
            flags[spec.flag_key] = definition
            self._replace(Path(spec.flag_file), document)
            return True

    @staticmethod
    def _read(spec: FlagdRouter) -> dict[str, Any] | None:
        path = Path(spec.flag_file)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            document = json.loads(text)
        except json.JSONDecodeError as err:
            raise RouterError(
                f"flag file {path} is not JSON (line {err.lineno}): fix or remove it"
            ) from None
        if not isinstance(document, dict) or not isinstance(document.get("flags", {}), dict):
            raise RouterError(f"flag file {path} is not a flagd flag file: no `flags` object")
        return document

    @staticmethod
    def _replace(path: Path, document: dict[str, Any]) -> None:
        handle, temp_name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(handle, "w") as temp:
                json.dump(document, temp, indent=2, sort_keys=True)
                temp.write("\n")
                temp.flush()
                os.fsync(temp.fileno())
            os.chmod(temp_name, 0o644)
            os.replace(temp_name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
            raise

    @contextlib.contextmanager
    def _locked(self, spec: FlagdRouter) -> Iterator[None]:
        problem = self._limits.flag_file_problem(spec.flag_file) if self._limits else None
        if problem is not None:
            raise ConfigurationError(f"flag file {problem}")
        path = Path(spec.flag_file)
        if not path.parent.is_dir():
            raise ConfigurationError(
                f"flag file folder {path.parent} does not exist: create it or fix "
                "targets.router.flag_file in the plan"
            )
        with open(path.parent / f".{path.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

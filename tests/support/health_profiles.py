"""Health profile builders: a valid profile in one place, so each test states only what differs."""

from __future__ import annotations

from typing import Any

from schemas.health_profile import HealthProfile


def profile_dict(**overrides: Any) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "name": "checkout",
        "service": "checkout",
        "prometheus": {"url": "http://127.0.0.1:9090"},
        "schedule": {"every": "10s", "overlap": "skip"},
        "checks": [
            {
                "name": "error-rate",
                "kind": "prometheus",
                "query": "sum(rate(errors[15s])) / sum(rate(requests[15s]))",
                "warn": {"max": 0.01},
                "fail": {"max": 0.05},
                "critical": True,
            },
            {
                "name": "healthz",
                "kind": "http",
                "url": "http://127.0.0.1:8080/healthz",
                "latency": {"warn": "200ms", "fail": "1s"},
            },
        ],
        "alerts": {
            "receivers": [
                {
                    "name": "am",
                    "kind": "alertmanager",
                    "url": "http://127.0.0.1:9093/api/v2/alerts",
                },
                {"name": "chat", "kind": "slack", "url": "http://127.0.0.1:9094/hook"},
            ]
        },
    }
    profile.update(overrides)
    return profile


def make_profile(**overrides: Any) -> HealthProfile:
    return HealthProfile.model_validate(profile_dict(**overrides))

"""Answers to a stuck undo from outside: every field bounded, nothing odd accepted."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from schemas.decision_messages import CompensationAction


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rows", -1),
        ("rows", 10**13),
        ("rows", float("nan")),
        ("rows", float("inf")),
        ("rows", "many"),
        ("by", "x" * 129),
        ("comment", "x" * 100_000),
        ("writes", {"action": "drop"}),  # a decision is the rollback's, never the sender's
    ],
)
def test_a_hostile_answer_is_refused_naming_its_field(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        CompensationAction.model_validate({"compensation": "migrate.1", field: value})
    assert caught.value.errors()[0]["loc"][0] == field


def test_the_count_a_person_saw_is_kept() -> None:
    action = CompensationAction.model_validate({"compensation": "migrate.1", "rows": 12})
    assert action.rows == 12

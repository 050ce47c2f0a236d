"""Plan and profile files as bytes and YAML: size, encoding, duplicate keys, aliases and
nesting are refused with one line saying where, before any field is looked at."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from schemas.health_profile import load_profile
from schemas.plan import load_plan, parse_plan
from schemas.problems import MAX_DOCUMENT_BYTES, MAX_NODES, PlanError
from tests.support.plans import plan_dict


def valid_plan_text() -> str:
    return yaml.safe_dump(plan_dict(), sort_keys=False)


def file_problems(path: Path) -> list[str]:
    with pytest.raises(PlanError) as caught:
        load_plan(path)
    return caught.value.problems


def text_problems(text: str) -> list[str]:
    with pytest.raises(PlanError) as caught:
        parse_plan(text)
    return caught.value.problems


def test_a_binary_file_is_not_utf8_text(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")

    assert file_problems(path) == [
        "(file): not UTF-8 text: a NUL byte at offset 8, as in a binary file"
    ]


def test_a_latin1_file_is_not_utf8_text(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_bytes(valid_plan_text().replace("2.0.0", "2.0.0-café").encode("latin-1"))

    (problem,) = file_problems(path)

    assert problem.startswith("(file): not UTF-8 text: byte 0xe9 at offset ")
    assert problem.endswith("(line 2) is not UTF-8; save the file as UTF-8")


def test_utf8_text_beyond_ascii_is_read(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(
        valid_plan_text().replace("checkout\n", "checkout\ndescription: Kassé für alle ✓\n", 1),
        encoding="utf-8",
    )

    assert load_plan(path).description == "Kassé für alle ✓"


def test_a_file_larger_than_the_cap_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    with path.open("wb") as file:
        file.truncate(5 * 1024 * 1024)  # 5 MB of NUL bytes: refused by size, not content

    assert file_problems(path) == [
        f"(file): larger than {MAX_DOCUMENT_BYTES // 1024} KiB, the most a plan may be"
    ]


def test_an_endless_file_is_read_no_further_than_the_cap() -> None:
    # /dev/zero says it is empty and never ends: only a bounded read can refuse it.
    assert os.stat("/dev/zero").st_size == 0
    assert file_problems(Path("/dev/zero")) == [
        f"(file): larger than {MAX_DOCUMENT_BYTES // 1024} KiB, the most a plan may be"
    ]


def test_a_profile_file_has_the_same_cap(tmp_path: Path) -> None:
    path = tmp_path / "profile.yaml"
    path.write_text("name: x\n" + "#" * MAX_DOCUMENT_BYTES)

    with pytest.raises(PlanError) as caught:
        load_profile(path)

    assert caught.value.problems == [
        f"(file): larger than {MAX_DOCUMENT_BYTES // 1024} KiB, the most a profile may be"
    ]


def test_plan_text_given_directly_has_the_same_cap() -> None:
    big = valid_plan_text() + "# padding\n" * (MAX_DOCUMENT_BYTES // 10)

    assert text_problems(big) == [
        f"(plan): larger than {MAX_DOCUMENT_BYTES // 1024} KiB, the most a plan may be"
    ]


def test_control_characters_in_text_name_their_line() -> None:
    assert text_problems("service: checkout\nversion: \x00\n") == [
        "(yaml) line 2: unacceptable character #x0000; control characters are not allowed"
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "service: checkout\nversion: 1\nservice: payments\n",
            "(yaml) line 3, column 1: duplicate key 'service' (first on line 1)",
        ),
        (
            "approvals:\n  timeout: 1h\n  identity: none\n  timeout: 2h\n",
            "(yaml) line 4, column 3: duplicate key 'timeout' (first on line 2)",
        ),
        (
            "phases:\n  - {name: a, kind: soft_launch, name: b}\n",
            "(yaml) line 2, column 34: duplicate key 'name' (first on line 2)",
        ),
    ],
)
def test_a_duplicate_key_is_refused_not_overwritten(text: str, problem: str) -> None:
    assert text_problems(text) == [problem]


def with_phases(phases_yaml: str) -> str:
    """The valid plan with its phases written out as `phases_yaml` (YAML at indent 0)."""
    data = plan_dict()
    del data["phases"]
    return yaml.safe_dump(data, sort_keys=False) + phases_yaml


def test_an_alias_and_a_merge_key_may_reuse_a_gate() -> None:
    plan = parse_plan(
        with_phases(
            "phases:\n"
            "  - name: full-launch\n"
            "    kind: full_launch\n"
            "    gates:\n"
            "      before: &gate {timeout: 2h, min_approvals: 2}\n"
            "      after: {<<: *gate, timeout: 3h}\n"
            "    steps: [{weight: 50, approval: *gate}, {weight: 100}]\n"
        )
    )

    gates = plan.phases[0].gates
    assert gates.before is not None
    assert gates.after is not None
    assert (gates.before.timeout, gates.after.timeout) == (timedelta(hours=2), timedelta(hours=3))
    assert gates.after.min_approvals == 2  # merged in; the mapping's own `timeout` wins


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        levels.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]")
    (problem,) = text_problems("\n".join(levels) + "\n")

    assert problem.startswith("(yaml) line ")
    assert f"holds more than {MAX_NODES} values once its aliases are expanded" in problem


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    assert text_problems("service: &s\n  inner: *s\n") == [
        "(yaml) line 2, column 10: alias *s refers to a value that contains it"
    ]


def test_deep_nesting_is_refused() -> None:
    (problem,) = text_problems("service: " + "[" * 100 + "]" * 100 + "\n")

    assert problem == "(yaml) line 1, column 41: nested more than 32 levels deep"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("9" * 5000, "cannot read this value: Exceeds the limit (4300 digits)"),
        ("2024-13-45", "cannot read this value: month must be in 1..12"),
    ],
)
def test_a_value_python_cannot_hold_names_its_line(value: str, problem: str) -> None:
    (found,) = text_problems(f"service: checkout\nversion: {value}\n")

    assert found.startswith("(yaml) line 2, column 10: ")
    assert problem in found


def test_a_document_that_is_not_a_mapping_says_so() -> None:
    assert text_problems("- service\n- version\n") == [
        "(plan): must be a mapping with service, version, phases, ..."
    ]


@pytest.mark.parametrize("key", ["\x1b[2Jcolour", "multi\nline", "bell\x07"])
def test_a_key_with_control_characters_is_shown_escaped_on_one_line(key: str) -> None:
    text = yaml.safe_dump({"service": "checkout", key: 1})
    with pytest.raises(PlanError) as caught:
        parse_plan(text)
    assert caught.value.problems
    for line in caught.value.problems:
        assert line.isprintable(), line
    assert any(
        key.encode("unicode_escape").decode("ascii") in line for line in caught.value.problems
    )

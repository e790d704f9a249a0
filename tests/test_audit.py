"""Verifier audit (``heal audit-verifier``) on the real benchmarks and on small files, and the answer
normalisation it motivated; every check runs Math-Verify in the real worker pool."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from heal_core.audit import audit_verifier
from heal_core.config import ProblemsConfig
from heal_core.verify import check_many

runner = CliRunner()


def test_math500_reference_solutions_agree_through_the_cli(benchmarks_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit.json"
    result = runner.invoke(
        app, ["audit-verifier", str(benchmarks_dir / "math500_test.jsonl"), "--format", "math", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    audit = json.loads(out.read_text())
    print(
        f"\nMATH-500 audit: {audit['agreed']}/{audit['audited']}, disagreements {audit['disagreements']}, "
        f"shuffled false positives {audit['false_positives']}"
    )
    assert (audit["problems"], audit["audited"]) == (500, 500) and audit["rejects"] == []
    assert audit["agreement"] >= 0.99
    assert f"{audit['agreed']}/500" in result.output
    # The one control "hit" is an equivalent answer written differently: gold "x=5" against "\boxed{5}".
    assert audit["false_positives"] == [["test/algebra/1837.json", "test/algebra/2193.json"]]


@pytest.mark.parametrize(("name", "fmt", "count"), [("gsm8k_test", "gsm8k", 1319), ("aime2024_test", "aime", 30)])
def test_gsm8k_and_aime2024_solutions_agree_fully(benchmarks_dir: Path, name: str, fmt: str, count: int) -> None:
    # AIME 2024 holds the three cases normalisation fixes: \framebox{204} (id 60), \boxed{104.} (id 70) and
    # \boxed{\textbf{(073)}} (id 75); GSM8K's "#### 1,450,000"-style finals are boxed as written.
    audit = audit_verifier(ProblemsConfig(uri=str(benchmarks_dir / f"{name}.jsonl"), format=fmt))
    assert (audit.problems, audit.audited, audit.agreed) == (count, count, count)
    assert audit.disagreements == [] and audit.false_positives == []


@pytest.mark.parametrize(("name", "fmt"), [("aime2025_test", "aime"), ("amc2023_test", "amc")])
def test_sets_without_reference_solutions_are_a_clear_error(benchmarks_dir: Path, name: str, fmt: str) -> None:
    result = runner.invoke(app, ["audit-verifier", str(benchmarks_dir / f"{name}.jsonl"), "--format", fmt])
    assert result.exit_code == 2 and "has a reference solution" in result.output


def test_disagreements_and_rejects_of_a_small_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    records = [
        {"id": "ok", "problem": "p", "answer": "1/2", "worked": r"so it is $\boxed{\dfrac{1}{2}}$."},
        {"id": "typo", "problem": "p", "answer": "7", "worked": r"hence \boxed{8}"},
        {"id": "unboxed", "problem": "p", "answer": "3", "worked": "the answer is 3"},
        {"id": "none", "problem": "p", "answer": "4"},
        {"id": "bad", "problem": "p"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    audit = audit_verifier(ProblemsConfig(uri=str(path), solution_field="worked"))
    assert (audit.problems, audit.audited, audit.agreed) == (4, 3, 1)
    assert [(d.problem_id, d.gold, d.extracted, d.status) for d in audit.disagreements] == [
        ("typo", "7", "8", "wrong"),
        ("unboxed", "3", None, "no_answer"),
    ]
    assert [str(r) for r in audit.rejects] == ["record 5: field 'answer': missing"]
    assert audit.to_json()["agreement"] == pytest.approx(1 / 3)

    result = runner.invoke(app, ["audit-verifier", str(path), "--format", "fields"])  # the CLI maps no solution field
    assert result.exit_code == 2 and "none of its 4 problems has a reference solution" in result.output
    result = runner.invoke(app, ["audit-verifier", str(path), "--set", "problems.solution_field=worked"])
    assert result.exit_code == 0 and "1/3" in result.output and "typo" in result.output
    result = runner.invoke(app, ["audit-verifier", str(path), "--format", "numina"])
    assert result.exit_code == 2 and "--format" in result.output and "'gsm8k'" in result.output
    result = runner.invoke(app, ["audit-verifier", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2 and "missing.jsonl" in result.output


def test_gsm8k_style_file_through_the_cli_lists_a_disagreement(tmp_path: Path) -> None:
    path = tmp_path / "gsm.jsonl"
    rows = [{"question": "q1", "answer": "5 * 200 = 1000\n#### 1,000"}, {"question": "q2", "answer": "oops\n#### 2,5"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(app, ["audit-verifier", str(path), "--format", "gsm8k"])
    assert result.exit_code == 0 and "1/1" in result.output  # the malformed final is a reject, not a crash
    assert "1 unreadable record(s), first: record 2: field 'answer'" in result.output


# (boxed prediction, gold, expected status): what the normalisation fixes, and near misses it must not accept.
NORMALISATION = [
    (r"\framebox{204}", "204", "correct"),
    (r"\boxed{104.}", "104", "correct"),
    (r"\boxed{105.}", "104", "wrong"),
    (r"\boxed{\dfrac{1}{2}.}", "0.5", "correct"),
    (r"\boxed{\textbf{(073)}}", "73", "correct"),
    (r"\boxed{\textbf{(074)}}", "73", "wrong"),
    (r"\boxed{\text{073}}", "73", "correct"),
    (r"\boxed{\mathbf{016}}", "16", "correct"),
    (r"\boxed{016}", "16", "correct"),
    (r"\boxed{16}", "016", "correct"),
    (r"\boxed{90°}", r"90^\circ", "correct"),
    (r"\boxed{16 \text{ cm}^2}", "16", "correct"),
    (r"\boxed{1,450,000}", "1450000", "correct"),
    (r"\boxed{\text{2 or 3}}", "2", "wrong"),
    (r"\boxed{2 \text{ or } 3}", "2", "wrong"),
    (r"\boxed{\text{(C)}}", r"\text{(C)}", "correct"),
    (r"\boxed{1, 2, 3.}", "1,2,3", "correct"),
]


def test_answer_normalisation_cases() -> None:
    verdicts = check_many([(prediction, gold) for prediction, gold, _ in NORMALISATION])
    assert [(p, g, v.status) for (p, g, _), v in zip(NORMALISATION, verdicts)] == NORMALISATION

"""cglib.cli.scorecard: the report stage's DVC metrics (results/scorecard.json)."""
import pytest

from cglib import cli


def claims(*verdicts):
    return {f"C{i}": {"claim": "long text " * 20, "verdict": v, "holds": {"holds": 1, "does not hold": 0}.get(v)}
            for i, v in enumerate(verdicts)}


def test_scorecard_counts_runs_and_verdicts_and_keeps_every_column():
    card = cli.scorecard(claims("holds", "holds", "does not hold", "not measured"), ["ok", "ok", "diverged"])
    assert card == {"runs": 2, "diverged": 1, "holds": 2, "fails": 1, "inconclusive": 0, "unmeasurable": 0,
                    "unmeasured": 1}
    every = cli.scorecard(claims(*cli.VERDICT_KEYS), ["ok"])
    assert [every[k] for k in cli.VERDICT_KEYS.values()] == [1] * 5
    assert cli.scorecard({}, []) == dict(runs=0, diverged=0, **dict.fromkeys(cli.VERDICT_KEYS.values(), 0))


def test_scorecard_refuses_an_unknown_verdict_naming_the_claim():
    with pytest.raises(ValueError, match=r"findings.json: C1: verdict 'maybe' is not one of holds, does not hold"):
        cli.scorecard(claims("holds", "maybe"), ["ok"])

"""benchmarks/rewrite_evidence.py: its weight updates by hand, its setting syntax, and that it leaves fia.rewrite as it found it."""

import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))
import rewrite_evidence  # noqa: E402  (a script beside its siblings, not a package)

import fia.rewrite  # noqa: E402


def test_kept_kinds_the_edit_weakened_weigh_more_and_the_others_do_not_move():
    mult = {"arrow": 1.0, "bolt": 2.0, "house": 1.0, "scene": 1.0}
    before = {"arrow": 0.8, "bolt": 0.5, "house": 0.9}
    after = {"arrow": 0.4, "bolt": 0.6, "house": 0.0}
    out = rewrite_evidence.kept_multipliers(mult, before, after, gamma=2.0)
    assert out["arrow"] == pytest.approx(4.0)  # (0.8 / 0.4) ** 2
    assert out["bolt"] == 2.0  # it gained: max(1, 0.5 / 0.6) = 1
    assert out["house"] == rewrite_evidence.CAP  # 0.9 / 1e-3 ** 2, capped
    assert out["scene"] == 1.0  # not a kind: no evidence
    assert rewrite_evidence.kept_multipliers(mult, before, after, gamma=0.0) == mult


def test_concepts_still_seen_weigh_more_by_hand():
    a = {"star": 1.0, "circle": 1.0, "square": 3.0}
    out = rewrite_evidence.concept_multipliers(a, {"star": 0.05, "circle": 0.0, "square": 0.5}, gamma=1.0)
    assert out == {"star": pytest.approx(2.0), "circle": 1.0, "square": rewrite_evidence.CAP}  # 1 + 0.05 / 0.05; 3 * 11 capped


def test_settings_syntax():
    assert rewrite_evidence.parse("0.05,0.03,5,4,24,1,1%2,2,0") == ("0.05,0.03,5,4,24,1,1", 2, 2.0, 0.0)
    assert rewrite_evidence.parse("0.05,0.03,5,4,24,1,1") == ("0.05,0.03,5,4,24,1,1", 0, 0.0, 0.0)
    for bad in ("0.05,0.03,5,4,24%2,2", "0.05,0.03,5,4,24%2,x,1", "0.05,0.03,5,4,24%-1,2,0", "0.05,0.03,5,4,24%1,2,0,4"):
        with pytest.raises(SystemExit, match="R,gamma_keep,gamma_concept"):
            rewrite_evidence.parse(bad)


def test_the_lever_puts_the_library_back_even_on_error():
    class NoEvidence:
        def unedited(self):
            return {}

    plain = (fia.rewrite.paired_moments, fia.rewrite.balanced_rewrite)
    with pytest.raises(RuntimeError, match="inside"):
        with rewrite_evidence.evidence_guided(["star"], NoEvidence(), 1, 2.0, 0.0, []):
            assert (fia.rewrite.paired_moments, fia.rewrite.balanced_rewrite) != plain
            raise RuntimeError("inside")
    assert (fia.rewrite.paired_moments, fia.rewrite.balanced_rewrite) == plain

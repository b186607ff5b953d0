"""The committed results: the cpu-scale findings come from the real CIFAR-10 copy, and the README's claims table is
the one they generate (``python plots.py claims results/cpu --readme README.md``)."""
import json
from pathlib import Path

import pytest

import plots

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "cpu"
NOTEBOOKS = ["01_expanded_search_space", "02_elite_spaces", "03_nas_table1", "04_bridging_the_gap",
             "05_design_principles"]


@pytest.mark.skipif(not RESULTS.is_dir(), reason="no committed cpu-scale results")
def test_the_readme_shows_the_claims_the_committed_findings_give():
    readme = (ROOT / "README.md").read_text()
    assert plots.BEGIN in readme and plots.END in readme
    section = readme.split(plots.BEGIN, 1)[1].split(plots.END, 1)[0].strip()
    assert section == plots.claims_table(RESULTS).strip()
    assert len(plots.claims(RESULTS)) >= 8


@pytest.mark.skipif(not RESULTS.is_dir(), reason="no committed cpu-scale results")
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_cpu_findings_come_from_the_real_cifar10_copy(name):
    findings = json.loads((RESULTS / name / "findings.json").read_text())
    assert findings["scale"] == "cpu"
    data = findings["small_run"]["data"] if name.startswith("01") else findings["data"]
    assert data["name"] == "CIFAR-10 (JPEG copy)" and data["classes"] == 10
    if not name.startswith("01"):          # notebook 01's small search takes a seeded subset of the same copy
        assert (data["training_images"], data["test_images"]) == (50_000, 10_000)
    pngs = list((RESULTS / name / "figures").glob("*.png"))
    assert pngs and all(10_000 < p.stat().st_size <= 400_000 for p in pngs)


def fake_findings(root: Path, elite_error: float, p: float):
    """The least findings that ``plots.claims`` reads, with the Elite Space's in-band median error and its p-value."""
    test = {"n_a": 20, "n_b": 20, "median_a": elite_error, "median_b": 50.0, "u": 1.0, "p": p}
    (root / "02_elite_spaces").mkdir(parents=True)
    (root / "02_elite_spaces" / "findings.json").write_text(json.dumps({"per_target": {"3MF": {
        "deviation_pct": 2.0, "within_10pct_elite": 0.4, "within_10pct_full": 0.1, "mann_whitney_elite_lower": test}}}))
    (root / "rank").mkdir()
    (root / "rank" / "rank.json").write_text(json.dumps({"kendall_tau": 0.6, "kendall_p": 0.01, "archs": [{}] * 10}))


@pytest.mark.parametrize("elite_error, p, verdict", [(40.0, 0.001, "holds"), (40.0, 0.3, "not shown (p ≥ 0.05)"),
                                                     (60.0, 0.9, "not shown (p ≥ 0.05)"), (60.0, 0.99, "opposite")])
def test_a_claim_holds_only_in_the_papers_direction_and_below_p_005(tmp_path, elite_error, p, verdict):
    fake_findings(tmp_path, elite_error, p)
    rows = {r["claim"]: r for r in plots.claims(tmp_path)}
    assert rows["Elite Spaces hold better networks at equal FLOPs (Fig. 3)"]["verdict"] == verdict
    assert rows["Elite Spaces sit at their FLOPs target (Fig. 3)"]["verdict"] == "holds"
    assert "Kendall τ = 0.60 (p = 0.01)" in rows["The evaluation supernet ranks architectures (basis of §4.2)"]["measured"]
    table = plots.claims_table(tmp_path)
    assert table.count("\n") == 2 + len(rows) and "\\|" not in table.splitlines()[0]


def test_write_claims_replaces_only_the_readme_section(tmp_path):
    fake_findings(tmp_path / "r", 40.0, 0.001)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{plots.BEGIN}\nold table\n{plots.END}\n\nthe rest\n")
    plots.write_claims(tmp_path / "r", readme)
    text = readme.read_text()
    assert text.startswith("# Title\n\n") and text.endswith(f"{plots.END}\n\nthe rest\n") and "old table" not in text
    assert plots.claims_table(tmp_path / "r") in text

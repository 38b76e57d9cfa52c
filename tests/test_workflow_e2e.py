"""The whole workflow end to end on config/test.yaml: data, LLM tables, every study block,
aggregation, statistics, figures and the HTML report, then its outputs checked.

The run happens in a temporary working directory (results/ of the repository stays clean), with
`.venv/bin` NOT on PATH: the jobs must find `mltfr` by themselves (workflow/rules/common.smk).
About 3-5 minutes on 2 shared cores, hence `slow` (CI still runs it: plain `pytest`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fixtures.slurm.workflow import scontrol_stub
from matplotlib.image import imread

from mltfr.spec import report_outputs as outputs

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATASET = "pantry-u10"
LADDER = ("holdout_valid", "selection", "eval_noise", "pooling")   # config/test.yaml's order
# The 26 final runs of config/test.yaml: (backbone, variant, protocol or ladder rung).
EXPECTED_RUNS = sorted(
    [("sasrec", "base", p) for p in ("faithful", "corrected")]
    + [("sasrec-ce", "base", p) for p in ("faithful", "corrected")]
    + [("pop", "base", p) for p in ("faithful", "corrected")]
    + [("sasrec", f"{m}-{llm}", "corrected") for m in ("direct", "filter") for llm in ("minilm", "paraphrase-minilm")]
    + [("sasrec", "mltfr", p) for p in ("faithful", "corrected")]
    + [("sasrec", v, "corrected") for v in ("mltfr-noconsensus", "mltfr-meanconsensus", "mltfr-random",
                                            "mltfr-randomselect", "mltfr-planted-sharp")]
    + [("sasrec", "mltfr@branch.tau=1.0", "corrected")]
    + [("sasrec", v, f"rung-{factor}") for v in ("base", "mltfr") for factor in LADDER]
)
AGGREGATION = {"run_manifest": 1, "tables": 1, "stats": 1, "figures": 1, "findings": 1, "all": 1}

pytestmark = pytest.mark.slow


def run_snakemake(workdir: Path, env: dict, *args: str, timeout: int = 1800) -> str:
    cmd = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
           "--configfile", "config/test.yaml", *args]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout + proc.stderr


def dry_run_counts(workdir: Path, env: dict) -> dict[str, int]:
    out = run_snakemake(workdir, env, "--dry-run", "--quiet", "rules")
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1].split("\n\n")[0]
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
    counts.pop("total")
    return counts


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """PATH without the virtualenv (as for a user who runs .venv/bin/snakemake without activating
    it), and a failing `scontrol` (the slurm plugin's import otherwise waits 10 s for a controller)."""
    stub = scontrol_stub(tmp_path_factory.mktemp("stub"))
    path = [p for p in os.environ["PATH"].split(os.pathsep) if p and Path(p).resolve() != BIN.resolve()]
    return os.environ | {"PATH": os.pathsep.join([str(stub), *path])}


@pytest.fixture(scope="module")
def workdir(module_scratch, env) -> Path:
    """A working directory holding the test config and the repository's data, after a full run."""
    work = module_scratch("e2e")
    (work / "config").mkdir()
    for name in ("test.yaml", "registry.yaml"):   # the study config and the registry it names
        shutil.copy(REPO / "config" / name, work / "config" / name)
    (work / "data").symlink_to(REPO / "data", target_is_directory=True)  # entries: data/... paths
    start = time.perf_counter()
    run_snakemake(work, env, "--cores", "2")
    run_snakemake(work, env, "--report", "report.html")
    print(f"\nconfig/test.yaml end to end on 2 cores: {time.perf_counter() - start:.0f} s")
    return work


def run_dirs(workdir: Path) -> list[Path]:
    return sorted(p.parent for p in (workdir / "results/test/runs").glob("*/*/*/*/seed*/result.json"))


def test_every_run_has_its_result_log_and_benchmark(workdir):
    found = sorted((d.parts[-4], d.parts[-3], d.parts[-2]) for d in run_dirs(workdir))
    assert found == EXPECTED_RUNS
    for backbone, variant, protocol in EXPECTED_RUNS:
        run = f"{DATASET}/{backbone}/{variant}/{protocol}/seed1"
        assert (workdir / "logs/test/train" / f"{run}.log").is_file()
        assert (workdir / "results/test/benchmarks/train" / f"{run}.tsv").is_file()
        assert (workdir / "results/test/runs" / run / "ranks.npz").is_file()


def test_runs_table_equals_the_result_files(workdir):
    runs = pd.read_csv(workdir / "results/test/tables/runs.csv")
    assert len(runs) == len(EXPECTED_RUNS)
    for row in runs.to_dict("records"):
        test = json.loads((workdir / row["run_dir"] / "result.json").read_text())["metrics"]["test"]
        assert row["test_ndcg@10"] == pytest.approx(test["ndcg@10"], abs=1e-12)
        assert row["test_hr@10"] == pytest.approx(test["hr@10"], abs=1e-12)
        assert row["test_mrr"] == pytest.approx(test["mrr"], abs=1e-12)
        assert (row["dataset"], row["seed"]) == (DATASET, 1)
    manifest = (workdir / "results/test/tables/runs.txt").read_text().split()
    assert sorted(manifest) == sorted(runs.run_dir)


def test_the_search_chose_on_validation_and_every_corrected_run_trains_with_it(workdir):
    root = workdir / "results/test/tuning" / DATASET / "sasrec"
    choice = json.loads((root / "choice.json").read_text())
    valid = {point: json.loads((root / point / "result.json").read_text())["metrics"]["valid"]["ndcg@10"]
             for point in ("lr=0.001", "lr=0.003")}
    best = max(valid, key=lambda point: (valid[point], point == "lr=0.001"))   # ties: the first point
    assert (choice["chosen"], choice["settings"]) == (best, {"lr": float(best.partition("=")[2])})
    table = pd.read_csv(workdir / "results/test/tables/tuning.csv")
    assert table.set_index("lr")["valid"].to_dict() == pytest.approx({0.001: valid["lr=0.001"], 0.003: valid["lr=0.003"]})
    assert table.loc[table["chosen"], "lr"].tolist() == [choice["settings"]["lr"]]
    for run in run_dirs(workdir):
        result = json.loads((run / "result.json").read_text())
        tuned = result["inputs"].get("tuned")
        if result["backbone"] == "sasrec" and result["protocol"] == "corrected":
            assert tuned["settings"] == choice["settings"] and result["config"]["lr"] == choice["settings"]["lr"]
        else:   # the faithful protocol and the untuned backbones keep the authors' settings
            assert tuned is None and result["config"]["lr"] == 0.001


def test_main_table_holds_the_runs_means(workdir):
    main = pd.read_csv(workdir / "results/test/tables/main.csv")
    runs = pd.read_csv(workdir / "results/test/tables/runs.csv")
    assert len(main) > 0
    ndcg = main[main.metric == "ndcg@10"].set_index(["protocol", "backbone", "variant"])
    study = runs[runs.rung.isna() | (runs.rung == "faithful")]   # ladder rungs stay out of the main table
    for protocol in ("faithful", "corrected"):
        for variant in ("base", "mltfr"):
            one = study[(study.protocol == protocol) & (study.backbone == "sasrec") & (study.variant == variant)]
            cell = ndcg.loc[(protocol, "sasrec", variant)]
            assert cell["mean"] == pytest.approx(one["test_ndcg@10"].item()) and cell["n_seeds"] == 1
        pop = runs[(runs.protocol == protocol) & (runs.backbone == "pop")]
        assert ndcg.loc[(protocol, "pop", "base")]["mean"] == pytest.approx(pop["test_ndcg@10"].item())
        assert pop["best_epoch"].item() == 0
    # one seed: no cell is bold, none has a spread, no comparison is marked significant
    assert not any("**" in row or "±" in row for row in table_rows(workdir / "results/test/tables/main.md"))
    assert "\\textbf" not in (workdir / "results/test/tables/main.tex").read_text().split("\\midrule")[1]
    for name in outputs.TABLES:
        assert (workdir / f"results/test/tables/{name}.md").stat().st_size > 0


def test_sensitivity_table_holds_the_sweep_and_the_default(workdir):
    # the sweep ran tau = 1.0; mltfr ran the corrected default tau = 0.5, read from its result
    sens = pd.read_csv(workdir / "results/test/tables/sensitivity.csv").set_index("value")
    runs = pd.read_csv(workdir / "results/test/tables/runs.csv").query("protocol == 'corrected'")
    assert sorted(sens.index) == [0.5, 1.0] and set(sens["param"]) == {"branch.tau"}
    for value, variant in ((0.5, "mltfr"), (1.0, "mltfr@branch.tau=1.0")):
        run = runs[(runs.variant == variant) & (runs.backbone == "sasrec")]
        assert sens.loc[value, "mean"] == pytest.approx(run["test_ndcg@10"].item())


def test_pvalue_table_compares_with_base_and_mltfr(workdir):
    pvalues = pd.read_csv(workdir / "results/test/stats/pvalues.csv")
    assert {"base", "mltfr"} <= set(pvalues.reference)
    row = pvalues[(pvalues.reference == "base") & (pvalues.variant == "mltfr") & (pvalues.protocol == "corrected")]
    assert row.n_users.item() == 543  # every user of pantry-u10 is evaluated
    assert 0 <= row.p_wilcoxon_holm.item() <= 1 and row.p_wilcoxon.item() <= row.p_wilcoxon_holm.item()
    assert row.ci_low.item() <= row.mean_diff.item() <= row.ci_high.item()
    assert (workdir / "results/test/stats/pvalues.md").stat().st_size > 0


def test_ladder_table_walks_from_faithful_to_corrected(workdir):
    """Rungs in the configured order per variant, each rung's NDCG@10 the run's, gains with CIs."""
    ladder = pd.read_csv(workdir / "results/test/tables/ladder.csv")
    runs = pd.read_csv(workdir / "results/test/tables/runs.csv")
    for variant in ("base", "mltfr"):
        rows = ladder[(ladder.variant == variant) & (ladder.backbone == "sasrec")]
        assert list(rows.rung) == ["faithful", *(f"rung-{f}" for f in LADDER)]
        for row in rows.to_dict("records"):
            rung = "faithful" if row["rung"] == "faithful" else row["rung"]
            folder = f"results/test/runs/{DATASET}/sasrec/{variant}/{rung}/seed1"
            run = runs[runs.run_dir == folder]
            assert row["ndcg@10"] == pytest.approx(run["test_ndcg@10"].item())
    assert not any("±" in row or "*" in row for row in table_rows(workdir / "results/test/tables/ladder.md"))  # one seed


def table_rows(path: Path) -> list[str]:
    """The body rows of a Markdown table file (its caption, above, may explain ± and marks)."""
    return [line for line in path.read_text().splitlines() if line.startswith("|")][2:]


@pytest.mark.parametrize("name", outputs.FIGURES)
def test_figure_is_drawn_as_png_and_pdf(workdir, name):
    image = imread(workdir / "figures/test" / f"{name}.png")  # (H, W, 3|4) floats
    colours = np.unique(image.reshape(-1, image.shape[-1]), axis=0)
    assert len(colours) > 1, f"{name}.png is blank"
    assert (workdir / "figures/test" / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"


def test_html_report_holds_every_figure(workdir):
    html = (workdir / "report.html").read_text(errors="replace")
    assert len(html) > 100_000
    for name in outputs.FIGURES:
        assert f"{name}.png" in html


def test_a_short_study_says_it_is_a_demonstration(workdir):
    # test.yaml trains 1 epoch: the report, the findings and every table caption say so
    html = (workdir / "report.html").read_text(errors="replace")
    assert "DEMONSTRATION, NOT A RESULT: every run of this study stops after a fixed 1 epoch(s)" in html
    assert "DEMONSTRATION" in (workdir / "results/test/findings.md").read_text()
    for name in ("main", "ablations", "protocols", "ladder"):
        assert "DEMONSTRATION" in (workdir / f"results/test/tables/{name}.md").read_text(), name


def test_second_run_has_nothing_to_do(workdir, env):
    assert dry_run_counts(workdir, env) == {}


def test_a_changed_result_reruns_the_aggregation_only(workdir, env):
    # as after a rerun of that run (a mere touch is not enough: Snakemake also compares checksums)
    result = workdir / "results/test/runs" / DATASET / "sasrec/base/corrected/seed1/result.json"
    result.write_text(json.dumps(json.loads(result.read_text()) | {"note": "rerun"}))
    assert dry_run_counts(workdir, env) == AGGREGATION


def test_adding_an_llm_adds_exactly_its_jobs(workdir, env):
    config = workdir / "config" / "test.yaml"
    original = config.read_text()
    cfg = yaml.safe_load(original)
    registry = yaml.safe_load((workdir / "config" / "registry.yaml").read_text())
    cfg.setdefault("llms", {})["minilm-b"] = dict(registry["llms"]["minilm"])   # a study config may add entries
    cfg["study"]["llms"].append("minilm-b")
    cfg["study"]["blocks"]["mltfr"]["llms"] = ["minilm", "paraphrase-minilm"]  # mltfr unchanged
    try:
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        counts = dry_run_counts(workdir, env)
    finally:
        config.write_text(original)
    # its table, direct-/filter-minilm-b (1 dataset x sasrec x corrected x 1 seed), the aggregation
    assert counts == {"extract_llm": 1, "train": 2, **AGGREGATION}

"""The Snakemake workflow: lint, format, the run grid by dry-run job counts, early config errors.

Dry runs need only the target list, so these tests run without the library CLI. Job counts
are hand-computed from the configs' grids (see each test).
"""
from __future__ import annotations

import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from fixtures.slurm.workflow import env_with, scontrol_stub

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """The environment of every snakemake call: a failing `scontrol`, then the venv, first on PATH.

    With Slurm's client installed but no controller running, the slurm plugin's import runs
    `scontrol show config`, which hangs for its 10 s timeout on every snakemake call.
    """
    return env_with(scontrol_stub(tmp_path_factory.mktemp("stub")))


def snakemake(env, *args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([SNAKEMAKE, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def job_counts(env, *args) -> dict[str, int]:
    """Jobs per rule of a dry run, from its "Job stats" table."""
    out = snakemake(env, "--dry-run", "--quiet", "rules", *args).stdout
    table = out.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def write_config(tmp_path, base: str, edit) -> str:
    """A copy of a shipped config with `edit(cfg)` applied, as a temp file. The registry entries
    the edits touch are copied into the config first (an entry there replaces the registry's)."""
    cfg = yaml.safe_load((REPO / base).read_text())
    registry = yaml.safe_load((REPO / "config/registry.yaml").read_text())
    for section in ("datasets", "llms"):
        cfg[section] = registry[section] | (cfg.get(section) or {})
    edit(cfg)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def test_lint_is_clean(env):
    proc = snakemake(env, "--lint")
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_snakefmt_check_is_clean():
    files = ["Snakefile", *sorted(str(p.relative_to(REPO)) for p in (REPO / "workflow/rules").glob("*.smk"))]
    proc = subprocess.run([str(BIN / "snakefmt"), "--check", *files], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_default_config_grid(env):
    # 2 datasets; baselines 2 x (sasrec, sasrec-ce) x 2 protocols x 3 seeds = 24, + pop (counted,
    # not trained: first seed only) 2 x 2 protocols = 4; single-LLM 4 LLMs x 2 modes = 8 (Pantry, corrected, seed 1); mltfr 2 x 2 x seed 1 = 4;
    # ablations 4 (with the random-selection control); sensitivity 2 (K=5, lambda_s=0.1).
    # Round 1 + merge: mltfr 4, ablations 3 (noconsensus has none), sensitivity 2 (lambda_s weights
    # round 1's random consensus expert too). The protocol ladder is off in the default (its
    # budget); config/test.yaml runs one.
    counts = job_counts(env)
    assert counts["train"] == 24 + 4 + 8 + 4 + 4 + 2
    assert counts["train_round1"] == counts["fisher"] == 4 + 3 + 2
    assert counts["extract_llm"] == 5  # 4 study LLMs + random-paraphrase-minilm for mltfr-random
    assert counts["prepare_dataset"] == 2
    # + run_manifest, tables, stats, figures, findings, all, and the tuning table (empty: no search)
    assert counts["tuning_table"] == 1 and "train_tuning" not in counts
    assert counts["total"] == 46 + 9 + 9 + 5 + 2 + 6 + 1


def test_paper_dry_run_with_slurm_profile(env):
    # main results: 7 datasets x 4 backbones x 2 protocols x 5 seeds = 280 cells x (base, mltfr)
    # + sasrec-ce base 7 x 2 x 5 = 70, + pop base 7 x 2 x seed 1 = 14; single-LLM 7 datasets x 7 LLMs x 2 modes x 3 seeds = 294;
    # ablations 3 datasets x 10 (every ablation and control) x 3 seeds = 90; sensitivity 2 datasets x
    # 17 values x 3 seeds = 102; protocol ladder (sasrec) 7 datasets x 3 seeds x 3 variants x 10 rungs
    # = 630, + rung 0 of mltfr-randomselect (faithful) 7 x 3 = 21.
    # Round 1 + merge: mltfr 280, ablations 3 x 9 x 3 = 81, sensitivity 2 x 17 x 3 = 102
    # (lambda_s too: it weights round 1's random consensus expert), ladder 7 x 3 x 2 x 10 + 21 = 441.
    # Timed by the CPU seconds of the snakemake process (user + sys): the machine is shared, so
    # wall time measures the other users as much as the DAG; both are printed.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    counts = job_counts(env, "--profile", "slurm")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    print(f"paper dry run with --profile slurm: {counts['total']} jobs, {cpu:.1f} s CPU, {wall:.1f} s wall")
    assert counts["train"] == 280 * 2 + 70 + 14 + 294 + 90 + 102 + 630 + 21
    assert counts["train_round1"] == counts["fisher"] == 280 + 81 + 102 + 441
    assert counts["extract_llm"] == 12 and counts["prepare_dataset"] == 7 and "plant_table" not in counts
    assert counts["total"] == 1781 + 2 * 904 + 12 + 7 + 6 + 1   # + the tuning table (no search here)
    # its speed is a goal measured by benchmarks/bench_dag.py, not a limit a loaded machine can miss


def test_slurm_profile_requests_gpu_for_training_only(env):
    env = env | {"MLTFR_SLURM_PARTITION": "gpuq", "MLTFR_SLURM_ACCOUNT": "proj7"}
    out = snakemake(env, "-n", "--profile", "slurm", "--configfile", "config/test.yaml").stdout
    jobs = {m[1]: m[2] for m in re.finditer(r"^(?:local)?rule (\w+):\n(.*?)\n\n", out + "\n\n", re.M | re.S)}
    for rule in ("train", "train_round1", "fisher"):
        assert re.search(r"resources:.*\bgpu=1\b", jobs[rule]), jobs[rule]
    for rule in ("prepare_dataset", "extract_llm"):
        assert "gpu=" not in jobs[rule], jobs[rule]
    assert "slurm_partition=gpuq" in jobs["train"] and "slurm_account=proj7" in jobs["train"]
    assert "mem_mb=32000" in jobs["train"]  # attempt 1 of `32000 * attempt`


def test_a_positive_control_adds_its_planted_table_built_from_the_prepared_data(env, tmp_path):
    def without(cfg):
        variants = cfg["study"]["blocks"]["ablations"]["variants"]
        cfg["study"]["blocks"]["ablations"]["variants"] = [v for v in variants if "planted" not in v]

    before = job_counts(env, "--configfile", write_config(tmp_path, "config/test.yaml", without))
    after = job_counts(env, "--configfile", "config/test.yaml")      # it runs mltfr-planted-sharp
    # one table for pantry-u10, one one-round run (corrected, 1 seed)
    assert after["plant_table"] == 1 and "plant_table" not in before
    assert after["train"] == before["train"] + 1 and after["total"] == before["total"] + 2
    target = "results/test/llm/planted-pantry-u10/meta.json"
    out = snakemake(env, target, "-n", "-p", "--configfile", "config/test.yaml").stdout
    assert "rule prepare_dataset:" in out and "rule plant_table:" in out
    assert re.search(r"mltfr extract-llm --config \S+ --llm \$\(basename \$\(dirname "
                     r"results/test/llm/planted-pantry-u10/meta.json\)\) --data \$\(dirname "
                     r"results/test/data/pantry-u10/meta.json\)", out)


def test_adding_an_llm_adds_exactly_its_jobs(env, tmp_path):
    before = job_counts(env, "--configfile", "config/test.yaml")

    def add_llm(cfg):
        cfg["llms"]["minilm-b"] = dict(cfg["llms"]["minilm"])
        cfg["study"]["llms"].append("minilm-b")
        cfg["study"]["blocks"]["mltfr"]["llms"] = ["minilm", "paraphrase-minilm"]

    after = job_counts(env, "--configfile", write_config(tmp_path, "config/test.yaml", add_llm))
    # one extraction, and direct-/filter-minilm-b on 1 dataset x 1 backbone x corrected x 1 seed
    assert after["extract_llm"] == before["extract_llm"] + 1
    assert after["train"] == before["train"] + 2
    assert after["total"] == before["total"] + 3


RUN = "results/test/runs/pantry-u10/sasrec/base/corrected/seed1/result.json"


def resumed_study(tmp_path, choice_age: str) -> Path:
    """A working directory as a fresh clone of a study leaves it: its data prepared, the search
    runs and their choice present (empty: a dry run does not read them), the run still missing;
    choice.json dated `choice_age` against the search runs' "now" (git's checkout order)."""
    (tmp_path / "config").mkdir()
    for name in ("test.yaml", "registry.yaml"):
        shutil.copy(REPO / "config" / name, tmp_path / "config" / name)
    (tmp_path / "data").symlink_to(REPO / "data", target_is_directory=True)
    tuning = tmp_path / "results/test/tuning/pantry-u10/sasrec"
    marker = tmp_path / "results/test/data/pantry-u10/meta.json"
    for path in [marker, marker.with_name("prepared.npz")] + [tuning / f"lr={lr}/result.json" for lr in ("0.001", "0.003")]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    (tuning / "choice.json").touch()
    when = time.time() + {"older": -3600, "newer": 3600}[choice_age]
    os.utime(tuning / "choice.json", (when, when))
    return tmp_path


def snakemake_in(workdir, env, *args) -> subprocess.CompletedProcess:
    """snakemake in `workdir` on config/test.yaml (the options last: several take lists)."""
    return subprocess.run([SNAKEMAKE, *args, "--snakefile", str(REPO / "Snakefile"), "--configfile",
                           "config/test.yaml"], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


def planned(workdir, env, target, *options) -> list[tuple[str, str]]:
    """(rule, count) rows of a dry run's "Job stats" table; [] when nothing is to be done."""
    out = snakemake_in(workdir, env, target, *options, "-n", "--quiet", "rules").stdout
    if "Nothing to be done" in out:
        return []
    return re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1].split("\n\n")[0], re.M)


@pytest.mark.parametrize("choice_age", ["older", "newer"])
def test_a_fresh_clone_plans_its_missing_runs_whatever_the_checkout_order(env, tmp_path, choice_age):
    """The choice reads its search runs as ancient: re-made because it is older than them, it
    would drop the missing runs that read it from the plan (Snakemake 9; common.smk)."""
    work = resumed_study(tmp_path, choice_age)
    assert planned(work, env, RUN) == [("train", "1"), ("total", "1")]


def test_a_finished_two_round_run_without_its_merged_expert_is_not_retrained(env, tmp_path):
    """A committed study keeps each run's results, not round 1's merged expert (.gitignore). On a
    fresh clone round 1's result.json can be newer than round 2's; asking for the expert then
    merged it again and retrained round 2 of every committed mltfr run."""
    work = resumed_study(tmp_path, "newer")
    for llm in ("minilm", "paraphrase-minilm"):   # config/test.yaml's mltfr tables, prepared
        (work / f"results/test/llm/{llm}").mkdir(parents=True)
        (work / f"results/test/llm/{llm}/meta.json").touch()
    run = work / "results/test/runs/pantry-u10/sasrec/mltfr/corrected/seed1"
    (run / "round1").mkdir(parents=True)
    (run / "round1/result.json").touch()
    (run / "result.json").touch()
    hour_ago = time.time() - 3600     # git's checkout order: round 2's result before round 1's
    os.utime(run / "result.json", (hour_ago, hour_ago))
    target = str((run / "result.json").relative_to(work))
    assert planned(work, env, target) == []
    retrain = planned(work, env, target, "--forcerun", "train_round1", "train")   # as for a changed table
    assert retrain == [("train_round1", "1"), ("fisher", "1"), ("train", "1"), ("total", "3")]
    (run / "result.json").unlink()      # not finished: the expert is merged, then round 2 trains
    assert planned(work, env, target) == [("fisher", "1"), ("train", "1"), ("total", "2")]


def test_a_plan_that_leaves_out_a_missing_run_stops_before_any_job(env, tmp_path):
    """Forcing the data to be prepared again makes Snakemake drop the run that reads it (an
    ancient input); the onstart check refuses, names the run and the fix, and runs nothing."""
    work = resumed_study(tmp_path, "newer")
    marker = work / "results/test/data/pantry-u10/meta.json"
    proc = snakemake_in(work, env, RUN, "--cores", "1", "--forcerun", str(marker.relative_to(work)))
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"1 training job(s) with missing results are left out of this plan, for example {RUN}" in out
    assert "`--until prepare_dataset`" in out and "Nothing was run" in out
    assert marker.read_bytes() == b"" and not (work / "logs/test/data").exists()   # not prepared


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda cfg: cfg["study"].update(sedes=[1]), "sedes"),  # unknown key
        (lambda cfg: cfg["study"].update(seeds="one"), "seeds"),  # wrong type
        (lambda cfg: cfg["study"]["blocks"]["ablations"]["variants"].append("nothing"), "nothing"),
    ],
)
def test_schema_errors_name_the_key_before_any_job(env, tmp_path, edit, named):
    proc = snakemake(env, "-n", "--configfile", write_config(tmp_path, "config/test.yaml", edit), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Error validating config file" in out and named in out
    assert "Job stats" not in out


def test_unknown_variant_names_the_registry(env, tmp_path):
    """Variant names are checked against mltfr.spec.variants, the one place they are defined."""
    edit = lambda cfg: cfg["study"]["blocks"]["ablations"]["variants"].append("mltfr-nothing")  # noqa: E731
    proc = snakemake(env, "-n", "--configfile", write_config(tmp_path, "config/test.yaml", edit), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    assert "config key `study.blocks.ablations.variants`: names 'mltfr-nothing'" in out
    assert "mltfr-randomselect" in out          # the fix lists the registry's names


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda cfg: cfg["study"]["llms"].append("nosuchllm"), ["study.llms", "nosuchllm"]),
        (lambda cfg: cfg["study"].update(datasets=["pantry-u10", "nosuchdata"]), ["study.datasets", "nosuchdata"]),
        (lambda cfg: controls(cfg) and cfg["llms"]["random-minilm"].update(like="nosuchllm"),
         ["llms.random-minilm.like", "nosuchllm"]),
        (lambda cfg: controls(cfg).pop("minilm"), ["study.blocks.ablations.random_controls", "minilm"]),
        (lambda cfg: cfg["study"]["blocks"]["sensitivity"].update(n_llms=[3]), ["study.blocks.sensitivity.n_llms"]),
    ],
)
def test_unknown_names_error_naming_the_key(env, tmp_path, edit, named):
    proc = snakemake(env, "-n", "--configfile", write_config(tmp_path, "config/test.yaml", edit), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    for text in named:
        assert text in out


def controls(cfg) -> dict:
    """An explicit random_controls mapping with written random entries (seeds 1 and 2)."""
    cfg["llms"].update({f"random-{llm}": {"source": "random", "like": llm, "seed": seed, "dim": 384}
                        for seed, llm in enumerate(["minilm", "paraphrase-minilm"], start=1)})
    block = cfg["study"]["blocks"]["ablations"]
    block["random_controls"] = {llm: f"random-{llm}" for llm in ("minilm", "paraphrase-minilm")}
    return block["random_controls"]


def pop_in_mltfr_block_only(cfg) -> None:
    cfg["study"]["backbones"] = ["sasrec", "pop"]
    for name, block in cfg["study"]["blocks"].items():
        block["backbones"] = ["pop"] if name == "mltfr" else ["sasrec"]


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda cfg: controls(cfg).update(minilm="random-nosuchllm"),
         ["config key `study.blocks.ablations.random_controls`", "names 'random-nosuchllm', which is not in `llms`"]),
        (lambda cfg: controls(cfg).update(minilm="paraphrase-minilm"),
         ["config key `study.blocks.ablations.random_controls.minilm`", "not a `source: random` entry"]),
        (lambda cfg: controls(cfg).update(minilm="random-paraphrase-minilm"),
         ["config key `study.blocks.ablations.random_controls.minilm`", "copies the shape of 'paraphrase-minilm'"]),
        (lambda cfg: cfg["study"].update(backbones=["sasrec", "pop"]),
         ["config key `study.backbones`", "block `single_llm` cannot run its LLM variants", "extra_backbones"]),
        (pop_in_mltfr_block_only, ["config key `study.blocks.mltfr.backbones`", "popularity ranking"]),
    ],
)
def test_random_controls_and_pop_are_checked_before_any_job(env, tmp_path, edit, named):
    assert_dry_run_fails(env, tmp_path, edit, named)


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda cfg: cfg["datasets"]["pantry-u10"].update(format="mltfr-pairs"), "datasets.pantry-u10.format"),
        (lambda cfg: cfg["datasets"]["pantry-u10"]["preprocess"]["k_core"].update(user=-1),
         "datasets.pantry-u10.preprocess.k_core.user"),
        (lambda cfg: cfg["llms"]["minilm"].update(package="nosuchpackage"), "llms.minilm.package"),
        (lambda cfg: cfg["llms"]["minilm"].update(dim=0), "llms.minilm.dim"),
    ],
)
def test_bad_registry_entry_names_its_key_before_any_job(env, tmp_path, edit, key):
    # the entries are checked by mltfr's own schemas, $ref'd from the workflow's schema
    proc = snakemake(env, "-n", "--configfile", write_config(tmp_path, "config/test.yaml", edit), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    assert f"config key `{key}`" in out, out


def test_registry_entries_are_not_given_schema_defaults(env, tmp_path):
    # the CLI reads the entries from the file; filling in defaults here would make the workflow's
    # copy differ from it (and `columns: null` would fail the entry schema)
    def minimal_entry(cfg):
        cfg["datasets"]["pantry-u10"].pop("description")
        cfg["datasets"]["pantry-u10"].pop("preprocess")

    counts = job_counts(env, "--configfile", write_config(tmp_path, "config/test.yaml", minimal_entry))
    assert counts["prepare_dataset"] == 1


def test_consensus_group_that_cannot_form_is_an_error(env, tmp_path):
    def no_shared_dim(cfg):   # the derived twin random-paraphrase-minilm takes the new dim too
        cfg["llms"]["paraphrase-minilm"]["dim"] = 576

    proc = snakemake(env, "-n", "--configfile", write_config(tmp_path, "config/test.yaml", no_shared_dim), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    assert "config key `study.llms`" in out and "Fisher consensus expert cannot be formed" in out


def run_specs(env, configfile, *targets) -> list[dict]:
    """The run specs (run.json, mltfr.spec.run_spec) of the `mltfr train` jobs a dry run would
    execute for `targets` (the backbone's search runs, which corrected runs of a tuned study wait
    for, left out): each job writes its spec with printf, then trains from it."""
    out = snakemake(env, *targets, "-n", "-p", "--configfile", configfile).stdout
    specs = []
    for line in out.splitlines():
        if "mltfr train --spec" in line:
            words = shlex.split(line)
            specs.append(json.loads(words[words.index("printf") + 2]))
    return [spec for spec in specs if "/tuning/" not in spec["out"]]


LADDER_RUN = "results/test/runs/pantry-u10/sasrec/{variant}/{rung}/seed1/result.json"


@pytest.mark.parametrize("variant", ["base", "mltfr"])
def test_ladder_rungs_differ_from_the_previous_in_one_setting(env, tmp_path, variant):
    from mltfr.spec import rungs as ladder

    rungs = ladder.rungs()   # the default order, all ten rungs (config/test.yaml trains four)
    every_rung = write_config(tmp_path, "config/test.yaml", lambda cfg: cfg["study"]["blocks"][
        "protocol_ladder"].update(order=[r.factors[-1] for r in rungs[1:]]))
    specs = run_specs(env, every_rung, *(LADDER_RUN.format(variant=variant, rung=r.name) for r in rungs))
    final = {spec["protocol"]: spec for spec in specs if not spec["out"].endswith("/round1")}
    assert set(final) == {r.name for r in rungs}          # rung 0 is the ordinary faithful run
    assert final["faithful"]["rung_order"] is None and "trace_test" not in final["faithful"]["sets"]
    for rung in rungs[1:]:
        now, before = dict(final[rung.name]["sets"]), dict(final[rung.previous]["sets"])
        assert now.pop("trace_test") is True and before.pop("trace_test", True) is True
        assert len(set(now.items()) ^ set(before.items())) == 1, rung.name   # one setting added
        key, value = ladder.FACTORS[rung.factors[-1]]
        assert now[key] == value and key not in before
        assert final[rung.name]["out"] == f"results/test/runs/pantry-u10/sasrec/{variant}/{rung.name}/seed1"
    if variant == "mltfr":   # round 1 of each rung in the rung's folder, with the same settings
        rounds1 = [spec for spec in specs if spec["out"].endswith("/round1")]
        assert len(rounds1) == len(rungs)
        assert all(spec["sets"] == final[spec["protocol"]]["sets"] for spec in rounds1)


@pytest.mark.parametrize("edit, named", [
    (lambda block: block.update(order=["selection", "noise"]), ["study.blocks.protocol_ladder.order.1"]),
    (lambda block: block.update(order=["selection", "selection"]), ["study.blocks.protocol_ladder.order"]),
    (lambda block: block.update(alone="yes"), ["study.blocks.protocol_ladder.alone"]),
    (lambda block: block.update(variants=["base", "mltfr-nothing"]),
     ["config key `study.blocks.protocol_ladder.variants`: names 'mltfr-nothing'"]),
    (lambda block: block.update(order=["user_vector", "pooling"]),
     ["config key `study.blocks.protocol_ladder.order`", "put pooling earlier"]),
])
def test_ladder_config_errors_name_the_key(env, tmp_path, edit, named):
    assert_dry_run_fails(env, tmp_path, lambda cfg: edit(cfg["study"]["blocks"]["protocol_ladder"]), named)


def assert_dry_run_fails(env, tmp_path, edit, named):
    """A dry run of config/test.yaml edited by `edit` stops before any job, printing every text of `named`."""
    proc = snakemake(env, "-n", "--configfile", write_config(tmp_path, "config/test.yaml", edit), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    for text in named:
        assert text in out, out


def test_paper_config_gives_each_backbone_the_authors_llms_and_group(env):
    specs = run_specs(
        env, "config/paper.yaml", "results/paper/runs/beauty/bert4rec/mltfr/faithful/seed1/round1/result.json",
        "results/paper/runs/beauty/sasrec/mltfr/faithful/seed1/round1/result.json")
    by_backbone = {spec["backbone"]: spec for spec in specs}
    assert list(by_backbone["bert4rec"]["llm"]) == ["bert-base", "p5-sports", "p5-beauty", "llama-7b"]
    assert list(by_backbone["sasrec"]["llm"]) == ["bert-base", "p5-sports", "p5-beauty", "gpt2", "llama-7b",
                                                  "qwen3-0.6b"]
    for spec in specs:   # the group BERT / P5-sports / P5-beauty, by position; not GPT-2
        assert spec["sets"]["branch.consensus_group"] == [0, 1, 2]


def test_per_backbone_llms_and_group_in_a_small_config(env, tmp_path):
    def per_backbone(cfg):
        cfg["study"]["blocks"]["mltfr"]["llms"] = {"sasrec": ["paraphrase-minilm", "minilm"]}
        cfg["study"]["blocks"]["mltfr"]["consensus_group"] = {"sasrec": ["minilm", "paraphrase-minilm"]}

    path = write_config(tmp_path, "config/test.yaml", per_backbone)
    noconsensus, random_round1 = sorted(run_specs(
        env, path, "results/test/runs/pantry-u10/sasrec/mltfr-noconsensus/corrected/seed1/result.json",
        "results/test/runs/pantry-u10/sasrec/mltfr-random/corrected/seed1/round1/result.json"),
        key=lambda spec: spec["variant"])
    assert "paraphrase-minilm" in noconsensus["llm"] and "branch.consensus_group" not in noconsensus["sets"]
    assert list(random_round1["llm"]) == ["random-paraphrase-minilm", "random-minilm"]
    assert random_round1["sets"]["branch.consensus_group"] == [1, 0]


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda block: block.update(llms={"bert4rec": ["minilm", "paraphrase-minilm"]}),
         ["study.blocks.mltfr.llms", "no entry for dataset 'pantry-u10' or backbone 'sasrec'"]),
        (lambda block: block.update(consensus_group=["minilm", "random-minilm"]),
         ["study.blocks.mltfr.consensus_group", "random-minilm", "not in the mltfr LLMs"]),
    ],
)
def test_bad_per_backbone_settings_name_the_key(env, tmp_path, edit, named):
    assert_dry_run_fails(env, tmp_path, lambda cfg: edit(cfg["study"]["blocks"]["mltfr"]), named)


def test_config_override_of_a_registry_is_refused_and_of_train_reaches_the_spec(env):
    proc = snakemake(env, "-n", "--configfile", "config/test.yaml", "--config", "registries=[]", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "config key `registries`" in out and "config/test.yaml" in out
    out = snakemake(env, "results/test/runs/pantry-u10/sasrec/base/faithful/seed1/result.json", "-n", "-p",
                    "--configfile", "config/test.yaml", "--config", "train={device: cpu}").stdout
    words = shlex.split(next(line for line in out.splitlines() if "mltfr train --spec" in line))
    assert json.loads(words[words.index("printf") + 2])["train"]["device"] == "cpu"   # merged into the section


def test_env_file_pins_the_pyproject_dependencies():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((REPO / "envs/mltfr.yaml").read_text())["dependencies"]
    pip = next(d["pip"] for d in conda if isinstance(d, dict))
    assert pip == deps
    assert "python=3.11" in conda


def test_slurm_profile_is_found_from_the_repo_root():
    assert (REPO / "slurm" / "config.yaml").resolve() == (REPO / "profiles/slurm/config.yaml").resolve()
    profile = yaml.safe_load((REPO / "slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["configfile"] == "config/paper.yaml"
    default = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    # the default profile wins over --profile: it must not set what the cluster profile sets
    assert not set(default) & {"executor", "jobs", "default-resources", "set-resources", "retries",
                               "latency-wait", "keep-going", "configfile"}


def write_result(root, variant_folder, recorded):
    """A minimal run folder as the trainer leaves it: it records `mltfr` and the changed setting."""
    folder = root / "pantry" / "sasrec" / variant_folder / "corrected" / "seed1"
    folder.mkdir(parents=True)
    from fixtures.results import result_document

    test = {m: 0.1 for m in ("hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr")}
    result = result_document("pantry", "sasrec", "mltfr", "corrected", 1, test, **recorded)
    (folder / "result.json").write_text(json.dumps(result))


def test_sensitivity_folders_are_read_as_their_variant(tmp_path):
    # the workflow names a sensitivity run's folder mltfr@<key>=<value>; the trainer records
    # variant mltfr with the setting in `config` (or, for n_llms, its LLM inputs)
    from mltfr.analysis.collect import collect_runs
    from mltfr.errors import DataError

    write_result(tmp_path, "mltfr@branch.tau=1.0", {"config": {"branch": {"tau": 1.0}}})
    write_result(tmp_path, "mltfr@n_llms=2", {"inputs": {"llm": {"a": "x", "b": "y"}}})
    runs = collect_runs(tmp_path)
    assert list(runs.variant) == ["mltfr@branch.tau=1.0", "mltfr@n_llms=2"]
    assert list(runs.param) == ["branch.tau", "n_llms"] and list(runs.value) == [1.0, 2.0]
    write_result(tmp_path, "mltfr@branch.K=5", {"config": {"branch": {"K": 3}}})
    with pytest.raises(DataError, match=r"folder says branch.K=5 but the run recorded 3"):
        collect_runs(tmp_path)


def test_bad_train_key_fails_the_dry_run_naming_it(env, tmp_path):
    # `train:` is checked against RunConfig (torch-free) when the DAG is built, not in the first job
    path = write_config(tmp_path, "config/test.yaml", lambda cfg: cfg["train"].update(epochz=2))
    proc = snakemake(env, "-n", "--configfile", path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    assert "train: unknown key 'epochz'" in out, out


def test_jobs_run_the_library_with_snakemakes_interpreter(env):
    # no PATH change while parsing: the command names the interpreter running Snakemake
    out = snakemake(env, "results/test/data/pantry-u10/meta.json", "-n", "-p", "--configfile", "config/test.yaml").stdout
    assert f"{BIN / 'python'} -m mltfr prepare --config config/test.yaml --dataset pantry-u10" in out, out


def written_paths(env, config: str) -> set[str]:
    """Every output, log and benchmark file of a study's jobs, from its dry run (forced: the
    jobs whose files are present or committed are listed too)."""
    out = snakemake(env, "-n", "--forceall", "--configfile", config).stdout
    fields = re.findall(r"^\s+(?:output|log|benchmark): (.+)$", out, re.M)
    return {path for field in fields for path in field.split(", ")}


def test_each_study_writes_only_under_its_own_name(env):
    # issue 14: the demo, the CI study and the committed CPU study never overwrite each other
    written = {}
    for config in ("config/config.yaml", "config/test.yaml", "config/cpu.yaml"):
        study = yaml.safe_load((REPO / config).read_text())["study"]
        name, findings = study["name"], study.get("findings")
        paths = written_paths(env, config)
        roots = (f"results/{name}/", f"figures/{name}/", f"logs/{name}/")
        assert paths and not [p for p in paths if not p.startswith(roots) and p != findings], config
        assert findings is None or findings in paths
        written[name] = paths
    assert sorted(written) == ["cpu", "demo", "test"]
    demo, test, cpu = written["demo"], written["test"], written["cpu"]
    assert not (demo & test) and not (demo & cpu) and not (test & cpu)
    assert "docs/findings.md" in cpu and "results/demo/findings.md" in demo

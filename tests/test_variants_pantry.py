"""Every study variant trains one epoch on Pantry with real offline LLM tables.

Round 1 -> the merge -> round 2 for the consensus variants, through the library calls the
workflow's commands make (mltfr.train.rounds.train_variant). Small d and L keep it quick; the LLM tables are the real packaged MiniLM pair (the
offline consensus group, both 30522 x 384) and their random controls.
"""
import json
import os
import signal

import numpy as np
import pytest
import yaml

from mltfr.cli import main
from mltfr.spec.round_plan import CONSENSUS_FILE, ROUND1, needs_round2
from mltfr.spec.run_config import RunConfig
from mltfr.train import batching
from mltfr.train.loop import Preempted, Trainer
from mltfr.train.rounds import train_variant

LLMS = ("minilm", "paraphrase-minilm")
FAST = ["--set", "epochs=1", "model.d=16", "model.max_len=10", "--threads", "2"]


@pytest.fixture(scope="module")
def inputs(repo, module_scratch):
    root = module_scratch("variants")
    config = root / "config.yaml"
    llms = {name: {"source": "package", "package": name} for name in LLMS}
    llms.update({f"random-{n}": {"source": "random", "like": n, "seed": 0} for n in LLMS})
    pantry = {"source": [{"path": str(repo / "data/amazon-pantry/train.txt.gz")},
                         {"path": str(repo / "data/amazon-pantry/test.txt.gz")}], "format": "mltfr-pair"}
    config.write_text(yaml.safe_dump({"datasets": {"pantry": pantry}, "llms": llms}))
    assert main(["prepare", "--config", str(config), "--dataset", "pantry", "--out", str(root / "data")]) == 0
    for name in llms:
        assert main(["extract-llm", "--config", str(config), "--llm", name, "--out", str(root / "llm" / name)]) == 0
    return root


def llm_tables(root, variant):
    names = [f"random-{n}" for n in LLMS] if variant == "mltfr-random" else LLMS
    return {n: root / "llm" / n for n in names} if variant != "base" else {}


def llm_args(root, variant):
    return ["--llm", *[f"{n}={folder}" for n, folder in llm_tables(root, variant).items()]]


def train(root, variant, out, *extra):
    args = ["train", "--data", str(root / "data"), "--out", str(out), "--backbone", "sasrec",
            "--protocol", "corrected", "--seed", "0", "--variant", variant, *FAST, *extra]
    if variant != "base":
        args += llm_args(root, variant)
    assert main(args) == 0
    return json.loads((out / "result.json").read_text())


@pytest.mark.parametrize("variant", ["base", "direct-minilm", "filter-minilm", "mltfr", "mltfr-nofilter",
                                     "mltfr-norouter", "mltfr-noconsensus", "mltfr-meanconsensus",
                                     "mltfr-frozen", "mltfr-random"])
def test_variant_trains_one_epoch(inputs, tmp_path, variant):
    cfg = RunConfig(backbone="sasrec", protocol="corrected", seed=0, variant=variant, epochs=1,
                    model={"d": 16, "max_len": 10})
    result = train_variant(tmp_path / "run", cfg, inputs / "data", llm_tables(inputs, variant))
    assert result == json.loads((tmp_path / "run" / "result.json").read_text())
    merged = tmp_path / "run" / ROUND1 / CONSENSUS_FILE
    assert merged.exists() == needs_round2(variant)
    if needs_round2(variant):
        assert result["config"]["consensus_file"] == str(merged)
        assert json.loads((tmp_path / "run" / ROUND1 / "result.json").read_text())["config"]["consensus_file"] is None
    test = result["metrics"]["test"]
    assert result["variant"] == variant and result["epochs_run"] == 1
    assert 0 < test["ndcg@10"] <= test["hr@10"] <= test["hr@20"] <= 1
    if variant == "base":
        assert "interp" not in result and result["branch"] is None
        return
    branch = result["branch"]   # every setting the branch ran with, defaults resolved
    assert (branch["pooling"], branch["eval_noise"], branch["tau"], branch["K"]) == ("user", False, 0.5, 1)
    assert branch["filtering"] == (not (variant.startswith("direct-") or variant == "mltfr-nofilter"))
    assert branch["trainable_tables"] == (variant != "mltfr-frozen")
    weights = result["interp"]["router_weights"]
    assert np.isclose(sum(weights.values()), 1.0, atol=1e-4)
    if variant == "mltfr-norouter":
        assert all(np.isclose(w, 1 / len(weights), atol=1e-5) for w in weights.values())
    tokens = next(iter(result["interp"]["top_tokens"].values()))
    if variant.startswith("direct-") or variant == "mltfr-nofilter":
        assert tokens == []  # prototypes select no tokens
    else:
        assert tokens and all(isinstance(t[0], str) and t[1] > 0 for t in tokens)


def test_consensus_file_of_other_llms_is_refused(inputs, tmp_path, capsys):
    train(inputs, "mltfr", tmp_path / "round1")
    merged = tmp_path / "consensus.safetensors"
    assert main(["fisher", "--run", str(tmp_path / "round1"), "--out", str(merged)]) == 0
    code = main(["train", "--data", str(inputs / "data"), "--out", str(tmp_path / "r2"), "--backbone",
                 "sasrec", "--protocol", "corrected", "--seed", "0", "--variant", "mltfr-random", *FAST,
                 *llm_args(inputs, "mltfr-random"), "--consensus", str(merged)])
    assert code == 2 and "rerun `mltfr fisher`" in capsys.readouterr().err


def test_fisher_without_round1_is_a_clear_error(tmp_path, capsys):
    assert main(["fisher", "--run", str(tmp_path / "missing"), "--out", str(tmp_path / "c.safetensors")]) == 2
    assert "run `mltfr train` for round 1 first" in capsys.readouterr().err
    assert not (tmp_path / "c.safetensors").exists()


def test_filter_run_preempted_after_its_last_diagnostics_step_resumes_to_the_same_result(inputs, tmp_path,
                                                                                         monkeypatch):
    """SIGTERM on epoch 1's last step: the resumed process has no diagnostics step left in that
    epoch, so its evaluation (torch.inference_mode) builds the filter's projection cache first, and
    epoch 2's later diagnostics steps refresh it in place (measured: this crashed ML-1M filter-smollm2)."""
    cfg = RunConfig(backbone="sasrec", protocol="corrected", seed=0, variant="filter-minilm", epochs=2,
                    model={"d": 16, "max_len": 10})
    tables = llm_tables(inputs, "filter-minilm")
    full = train_variant(tmp_path / "full", cfg, inputs / "data", tables)
    step, calls = Trainer.train_step, []

    def step_then_signal(self, seqs, users):
        calls.append(1)
        per_epoch = batching.n_steps(len(self.state.order), self.cfg.batch_size)
        assert per_epoch > 2 * cfg.diagnostics_every      # epoch 2 refreshes the cache after a step
        if len(calls) == per_epoch:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, seqs, users)

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    with pytest.raises(Preempted, match="received SIGTERM: checkpoint saved"):
        train_variant(tmp_path / "cut", cfg, inputs / "data", tables)
    monkeypatch.setattr(Trainer, "train_step", step)
    resumed = train_variant(tmp_path / "cut", cfg, inputs / "data", tables)
    assert resumed["metrics"] == full["metrics"] and resumed["epochs_run"] == 2

"""`mltfr fisher` between the rounds: which round-1 state it uses (by protocol) and its seeding.

Tiny synthetic inputs written to disk (a ring dataset and two same-D token tables), run through
the CLI exactly as the workflow runs it: round 1 (`mltfr train`), then `mltfr fisher`.
"""
import json

import pytest
import torch
from safetensors import safe_open
from test_train import toy_prepared

from mltfr.cli import main
from mltfr.data.prepared import save_prepared
from mltfr.llm.cache import write_meta, write_table

FAST = ["--set", "epochs=3", "model.d=8", "model.max_len=8", "batch_size=16", "--device", "cpu",
        "--threads", "1"]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A prepared toy dataset and two 12-d token tables (a Fisher consensus group)."""
    root = tmp_path_factory.mktemp("fisher-inputs")
    save_prepared(root / "data", toy_prepared())
    gen = torch.Generator().manual_seed(0)
    for name, vocab in (("a", 50), ("b", 60)):
        folder = root / "llm" / name
        folder.mkdir(parents=True)
        sha = write_table(folder, torch.randn(vocab, 12, generator=gen), "fp32")
        write_meta(folder, {"vocab_size": vocab, "dim": 12, "sha256": sha})
    return root


def round1(inputs, out, protocol, seed=0):
    llms = [f"--llm={n}={inputs / 'llm' / n}" for n in ("a", "b")]
    assert main(["train", "--data", str(inputs / "data"), "--out", str(out), "--backbone", "sasrec",
                 "--protocol", protocol, "--seed", str(seed), "--variant", "mltfr", *FAST, *llms]) == 0
    return torch.load(out / "checkpoint.pt", weights_only=True)


def fisher(run_dir, out):
    assert main(["fisher", "--run", str(run_dir), "--out", str(out)]) == 0
    with safe_open(str(out), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, json.loads(fh.metadata()["mltfr"])


def expected_merge(inputs, run_dir, state_dict):
    """The merge `mltfr fisher` must write when it runs on `state_dict` (same batches, same seed)."""
    from mltfr.data import load_prepared
    from mltfr.models.fisher_merge import merge_round1
    from mltfr.spec.run_config import RunConfig
    from mltfr.train.batching import fisher_batches, train_windows
    from mltfr.train.run import build_model, split_for_run

    cfg = RunConfig.from_dict(torch.load(run_dir / "checkpoint.pt", weights_only=True)["config"])
    split = split_for_run(load_prepared(inputs / "data"), cfg)
    llms = {n: inputs / "llm" / n for n in ("a", "b")}
    model = build_model(cfg, split.n_items, torch.device("cpu"), llms)
    model.load_state_dict(state_dict)
    windows = torch.from_numpy(train_windows(split.train_offsets, split.train_items, cfg.model.max_len,
                                             cfg.window_items))
    batches = fisher_batches(windows, cfg.batch_size, cfg.seed if cfg.shuffles_fisher else None)
    return merge_round1(model, batches, seed=cfg.seed)[0]


# ladder rungs: the state follows the selection (rung-selection: faithful, early stopping on
# valid) and the batches the training split (alone-holdout_valid: faithful, valid item held out)
@pytest.mark.parametrize("protocol, label", [("faithful", "last-epoch"), ("corrected", "best-on-valid"),
                                             ("rung-selection", "best-on-valid"),
                                             ("alone-holdout_valid", "last-epoch")])
def test_fisher_uses_the_protocols_round1_state_and_is_seeded(inputs, tmp_path, protocol, label):
    run_dir = tmp_path / "r1"
    ckpt = round1(inputs, run_dir, protocol)
    # make the best and the last state surely differ: shift the best state's experts
    best = ckpt["state"]["best_state"]
    for key in [k for k in best if k.startswith("branch.experts.")]:
        best[key] = best[key] + 0.5
    torch.save(ckpt, run_dir / "checkpoint.pt")
    merged, meta = fisher(run_dir, tmp_path / "c1.safetensors")
    last = label == "last-epoch"
    epoch = ckpt["state"]["epoch"] if last else ckpt["state"]["best_epoch"]
    assert (meta["round1_state"], meta["round1_epoch"], meta["seed"]) == (label, epoch, 0)
    if not last:   # a finished best-on-valid run keeps no last-epoch state to merge by mistake
        assert ckpt["model"] is None and ckpt["optimizer"] is None
    want = expected_merge(inputs, run_dir, ckpt["model"] if last else best)
    assert all(torch.allclose(merged[k], want[k], atol=1e-6) for k in want)
    if last:
        not_want = expected_merge(inputs, run_dir, best)
        assert any(not torch.allclose(merged[k], not_want[k], atol=1e-3) for k in want)
    again, _ = fisher(run_dir, tmp_path / "c2.safetensors")
    assert all(torch.equal(merged[k], again[k]) for k in merged)    # seeded: the same merge twice


@pytest.mark.parametrize("protocol, order", [("faithful", "shuffled"), ("corrected", "users")])
def test_fisher_batches_follow_the_protocol(inputs, tmp_path, protocol, order):
    """Faithful: the authors' sampler shuffles the Fisher pass's batches (seeded by the run's seed);
    corrected: user order."""
    from mltfr.train.batching import fisher_batches

    run_dir = tmp_path / "r1"
    round1(inputs, run_dir, protocol)
    _, meta = fisher(run_dir, tmp_path / "c.safetensors")
    assert meta["batch_order"] == order
    windows = torch.arange(40).repeat(3, 1).T                       # (40, 3): row i holds i
    first = lambda seed: torch.cat(fisher_batches(windows, 16, seed))[:, 0].tolist()  # noqa: E731
    assert first(None) == list(range(40))
    assert sorted(first(3)) == list(range(40)) and first(3) == first(3) != first(4) != list(range(40))
    assert [len(b) for b in fisher_batches(windows, 16, 3)] == [16, 16, 8]

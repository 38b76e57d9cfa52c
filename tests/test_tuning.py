"""The backbone's validation search (mltfr.study.tuning, `mltfr tune`, `mltfr train --tuned`)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from mltfr.analysis.tuning_table import tuning_table
from mltfr.cli import main
from mltfr.errors import DataError
from mltfr.study import tuning

GRID = {"lr": [0.001, 0.003], "model.dropout": [0.2, 0.5]}


def test_points_take_the_product_in_order_and_name_their_folders():
    points = tuning.points(GRID)
    assert points == [{"lr": 0.001, "model.dropout": 0.2}, {"lr": 0.001, "model.dropout": 0.5},
                      {"lr": 0.003, "model.dropout": 0.2}, {"lr": 0.003, "model.dropout": 0.5}]
    assert [tuning.point_name(p) for p in points][-1] == "lr=0.003,model.dropout=0.5"
    assert tuning.point_name({"weight_decay": 0.0001, "batch_size": 256}) == "weight_decay=0.0001,batch_size=256"


def write_result(root, settings: dict, valid: float, dataset="pantry", seed=0):
    """A search run's result.json with the keys `choose` reads."""
    folder = root / tuning.point_name(settings)
    folder.mkdir(parents=True)
    config = {"lr": settings["lr"], "model": {"dropout": settings["model.dropout"]}}
    result = {"config": config, "metrics": {"valid": {"ndcg@10": valid}}, "best_epoch": 7, "epochs_run": 17,
              "timings": {"train_s": 12.5}, "dataset": {"name": dataset}, "backbone": "sasrec", "seed": seed}
    (folder / "result.json").write_text(json.dumps(result))
    return folder / "result.json"


def test_choice_is_the_best_validation_score_and_ties_go_to_the_earlier_point(tmp_path):
    scores = [0.030, 0.041, 0.041, 0.020]        # points 2 and 3 tie: the earlier one wins
    paths = [write_result(tmp_path, p, s) for p, s in zip(tuning.points(GRID), scores)]
    choice = tuning.choose(paths, list(GRID), "ndcg@10", expected=4)
    assert choice["chosen"] == "lr=0.001,model.dropout=0.5"
    assert choice["settings"] == {"lr": 0.001, "model.dropout": 0.5}
    assert [p["valid"] for p in choice["points"]] == scores
    assert (choice["dataset"], choice["backbone"], choice["seed"], choice["complete"]) == ("pantry", "sasrec", 0, True)
    assert tuning.choose(paths[:3], list(GRID), "ndcg@10", expected=4)["complete"] is False


def test_a_run_whose_settings_disagree_with_its_folder_is_refused(tmp_path):
    path = write_result(tmp_path, {"lr": 0.001, "model.dropout": 0.2}, 0.03)
    moved = tmp_path / "lr=0.003,model.dropout=0.2"
    path.parent.rename(moved)
    with pytest.raises(DataError, match="recorded lr=0.001,model.dropout=0.2 but lies in folder lr=0.003"):
        tuning.choose([moved / "result.json"], list(GRID), "ndcg@10")


def test_runs_of_two_datasets_are_not_one_choice(tmp_path):
    first = write_result(tmp_path / "a", {"lr": 0.001, "model.dropout": 0.2}, 0.03)
    second = write_result(tmp_path / "b", {"lr": 0.003, "model.dropout": 0.2}, 0.04, dataset="ml-1m")
    with pytest.raises(DataError, match="mix datasets"):
        tuning.choose([first, second], list(GRID), "ndcg@10")


@pytest.mark.parametrize("text, problem", [("{not json", "not a readable tuning choice"),
                                           ('{"points": []}', "not a readable tuning choice"),
                                           ('{"settings": {"lr": NaN}}', "not a mapping of finite values")])
def test_a_broken_choice_file_is_a_one_line_error_naming_the_fix(tmp_path, capsys, text, problem):
    bad = tmp_path / "choice.json"
    bad.write_text(text)
    with pytest.raises(DataError, match=problem):
        tuning.read_choice(bad)
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--backbone", "sasrec",
                 "--protocol", "corrected", "--seed", "0", "--tuned", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and problem in err and "rule tuning_choice" in err and err.count("\n") == 1


def test_choose_cli_writes_the_choice_and_the_table_marks_it(tmp_path):
    paths = [write_result(tmp_path, p, s) for p, s in zip(tuning.points(GRID), [0.01, 0.02, 0.05, 0.04])]
    out = tmp_path / "choice.json"
    assert main(["tune", "choose", "--results", *map(str, paths), "--keys", "lr,model.dropout",
                 "--expected", "4", "--out", str(out)]) == 0
    choice = json.loads(out.read_text())
    assert tuning.read_choice(out) == {"lr": 0.003, "model.dropout": 0.2}
    table = tuning_table([choice])
    assert table.tidy["chosen"].tolist() == [False, False, True, False]
    assert table.display.loc[table.tidy["chosen"], "valid"].tolist() == ["0.0500"]
    assert "every corrected run of its dataset and backbone trains with" in table.caption
    assert main(["tune", "table", "--tables", str(tmp_path / "tables")]) == 0
    assert "no tuning block" in (tmp_path / "tables" / "tuning.md").read_text()


def test_findings_state_the_choice_and_count_the_corrected_runs_that_train_with_it(tmp_path):
    from mltfr.analysis.findings_report import tuning_text
    from mltfr.analysis.render import write_table

    paths = [write_result(tmp_path / "search", p, s) for p, s in zip(tuning.points(GRID), [0.01, 0.02, 0.05, 0.04])]
    write_table(tuning_table([tuning.choose(paths, list(GRID), "ndcg@10", expected=4)]), tmp_path)
    runs = pd.DataFrame({"dataset": "pantry", "backbone": "sasrec",
                         "protocol": ["corrected", "corrected", "corrected", "faithful"],
                         "lr": [0.003, 0.003, 0.001, 0.001], "model.dropout": [0.2, 0.2, 0.2, 0.2]})
    runs.to_csv(tmp_path / "runs.csv", index=False)
    text = tuning_text(tmp_path)
    assert "pantry/sasrec: **lr = 0.003, model.dropout = 0.2**, validation ndcg@10 0.0500, the best of 4 points" in text
    assert "2 of 3 corrected runs train with these settings; the other 1 predate the search" in text
    assert tuning_text(tmp_path / "nowhere") == ""

"""result.json and the `mltfr evaluate` file against src/mltfr/schemas/result.schema.yaml: real
Pantry runs (base, an LLM variant, pop) validate, the schema documents every key, bad documents
are refused before they are written."""
import json

import jsonschema
import pytest
import yaml
from fixtures.results import branch_settings, result_document

from mltfr.cli import main
from mltfr.config_files import load_schema
from mltfr.errors import MltfrError
from mltfr.train.result import validated

FAST = ["--set", "epochs=1", "model.d=16", "model.max_len=10", "--threads", "1", "--device", "cpu"]
TEST = {"hr@5": 0.1, "hr@10": 0.2, "hr@20": 0.3, "ndcg@5": 0.05, "ndcg@10": 0.1, "ndcg@20": 0.12, "mrr": 0.04}


def schema_errors(doc, definition=None):
    """Validation messages, with jsonschema directly (not through the writer's check)."""
    schema = load_schema("result")
    if definition:
        schema = {"$ref": f"#/$defs/{definition}", "$defs": schema["$defs"]}
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]


@pytest.fixture(scope="module")
def inputs(real_data, tmp_path_factory):
    """Pantry prepared and the packaged MiniLM table extracted, through the CLI."""
    root = tmp_path_factory.mktemp("schema")
    folder = real_data / "amazon-pantry"
    config = {"datasets": {"pantry": {"source": [{"path": str(folder / "train.txt")},
                                                 {"path": str(folder / "test.txt")}], "format": "mltfr-pair"}},
              "llms": {"minilm": {"source": "package", "package": "minilm"}}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["prepare", "--config", str(root / "config.yaml"), "--dataset", "pantry",
                 "--out", str(root / "data")]) == 0
    assert main(["extract-llm", "--config", str(root / "config.yaml"), "--llm", "minilm",
                 "--out", str(root / "minilm")]) == 0
    return root


@pytest.mark.parametrize("backbone, variant, protocol", [
    ("sasrec", "base", "corrected"), ("sasrec", "filter-minilm", "faithful"), ("pop", "base", "corrected")])
def test_real_runs_validate(inputs, tmp_path, backbone, variant, protocol):
    out = tmp_path / "run"
    llm = ["--llm", f"minilm={inputs / 'minilm'}"] if variant != "base" else []
    assert main(["train", "--data", str(inputs / "data"), "--out", str(out), "--backbone", backbone,
                 "--protocol", protocol, "--seed", "0", "--variant", variant, *FAST, *llm]) == 0
    result = json.loads((out / "result.json").read_text())
    assert schema_errors(result) == []
    faithful = protocol == "faithful"                       # the settings resolved by protocol
    assert result["model"]["impl"] == ("authors" if faithful else "ours")
    assert (result["train_vocab"], result["n_items"]) == ((True, 4794) if faithful else (False, 4884))
    assert (result["round1_budget"], result["fisher_shuffle"]) == (("authors", True) if faithful else ("full", False))
    assert (result["branch"] is None) == (variant == "base")
    assert ("interp" in result and "diagnostics" in result) == (variant != "base")
    assert set(result["metrics"]) == ({"test", "valid"} if protocol == "corrected" else {"test"})
    assert main(["evaluate", "--run", str(out), "--device", "cpu"]) == 0
    again = json.loads((out / "eval-full-ranking.json").read_text())
    assert schema_errors(again, "evaluation") == []
    assert schema_errors(result, "evaluation") != []          # the two documents are told apart


def test_every_key_is_described():
    schema = load_schema("result")

    def described(node):
        if "$ref" in node and "description" not in node:
            return described(schema["$defs"][node["$ref"].rsplit("/", 1)[1]])
        return bool(node.get("description"))

    assert [key for key, node in schema["properties"].items() if not described(node)] == []
    assert described(schema["$defs"]["evaluation"])
    assert [k for k, node in schema["$defs"]["evaluation"]["properties"].items() if not described(node)] == []


def test_synthetic_fixture_documents_validate():
    """The analysis tests' runs (fixtures.results) use only the writer's keys."""
    assert schema_errors(result_document("d", "sasrec", "base", "corrected", 1, TEST, TEST)) == []
    llm = result_document("d", "sasrec", "filter-x", "faithful", 1, TEST, branch=branch_settings(["x"]))
    assert any("interp" in m for m in schema_errors(llm))     # a branch run needs interp, diagnostics


@pytest.mark.parametrize("change, key", [
    (lambda d: d.pop("timings"), "timings"),                                    # a key the analysis reads
    (lambda d: d.update(n_params=5), "n_params"),                               # a name nobody writes
    (lambda d: d["metrics"]["test"].pop("mrr"), "mrr"),
    (lambda d: d["timings"].update(epoch_s=1.0), "epoch_s"),
    (lambda d: d.update(interp={}), "interp"),                                  # interp without a branch
])
def test_writer_refuses_a_document_off_the_schema(change, key):
    doc = result_document("d", "sasrec", "base", "corrected", 1, dict(TEST), dict(TEST))
    assert validated(doc) is doc
    change(doc)
    with pytest.raises(MltfrError, match="does not match result.schema.yaml"):
        validated(doc)
    assert any(key in m for m in schema_errors(doc))

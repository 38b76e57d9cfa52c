"""Where the workflow writes (docs/architecture.md, "Layout of generated files"). Torch-free.

Every study config has a name (`study.name`) and writes only under it, so the demonstration,
the CI study and a converged study committed to the repository never overwrite each other:

    results/<name>/   data/, llm/, runs/, tuning/ (the backbone's validation search), tables/,
                      stats/, benchmarks/ (job timings)
    figures/<name>/   the figures
    logs/<name>/      one log per job

Templates take the workflow's wildcards; the markers are the files written last (meta.json holds
the checksums), so downstream jobs depend on one file per dataset and per LLM.
"""
from __future__ import annotations

from dataclasses import dataclass

from mltfr.spec.round_plan import ROUND1

RUN_WILDCARDS = "{dataset}/{backbone}/{variant}/{protocol}/seed{seed}"


@dataclass(frozen=True)
class Layout:
    """The folders and file templates of the study named `name`."""

    name: str
    findings_file: str | None = None  # study.findings; None: results/<name>/findings.md

    @property
    def root(self) -> str:
        return f"results/{self.name}"

    @property
    def data_root(self) -> str:
        return f"{self.root}/data"

    @property
    def data_dir(self) -> str:
        return f"{self.data_root}/{{dataset}}"

    @property
    def llm_dir(self) -> str:
        return f"{self.root}/llm/{{llm}}"

    @property
    def run_dir(self) -> str:
        return f"{self.root}/runs/{RUN_WILDCARDS}"

    @property
    def round1_dir(self) -> str:
        return f"{self.run_dir}/{ROUND1}"

    @property
    def tuning_dir(self) -> str:
        """One (dataset, backbone)'s validation search: a folder per point, and the choice."""
        return f"{self.root}/tuning/{{dataset}}/{{backbone}}"

    @property
    def tuning_run_dir(self) -> str:
        return f"{self.tuning_dir}/{{point}}"

    @property
    def tuning_choice(self) -> str:
        return f"{self.tuning_dir}/choice.json"

    @property
    def tables(self) -> str:
        return f"{self.root}/tables"

    @property
    def stats(self) -> str:
        return f"{self.root}/stats"

    @property
    def benchmarks(self) -> str:
        return f"{self.root}/benchmarks"

    @property
    def figures(self) -> str:
        return f"figures/{self.name}"

    @property
    def logs(self) -> str:
        return f"logs/{self.name}"

    @property
    def findings(self) -> str:
        return self.findings_file or f"{self.root}/findings.md"

    @property
    def data_marker(self) -> str:
        return f"{self.data_dir}/meta.json"

    @property
    def llm_marker(self) -> str:
        return f"{self.llm_dir}/meta.json"

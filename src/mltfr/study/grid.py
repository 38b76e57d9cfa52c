"""The run grid of a validated study config, and each run's LLMs and CLI arguments. Torch-free.

The grid is computed from `config["study"]` only, so adding a dataset or an LLM to the registries
and to `study` adds its jobs and nothing else. Variant names, their LLMs and rounds come from
`mltfr.spec.variants`. Variants with a consensus expert take three jobs: round 1 (`mltfr
train`), the merge (`mltfr fisher`), round 2 (`mltfr train --consensus FILE`). The mltfr LLM set
and its consensus group may differ per backbone and per dataset (`study.blocks.mltfr.llms` and
`.consensus_group`: one list, or a mapping by dataset and/or backbone). The protocol ladder's rungs and
the protocol-factor settings (`mltfr.spec.rungs`) are values of the `protocol` wildcard.

DAG speed (the paper grid has thousands of jobs): everything derived from a variant name is cached.
"""
from __future__ import annotations

import functools
import itertools
import re
from collections import namedtuple
from typing import Mapping

from mltfr.errors import ConfigError, key_error
from mltfr.spec import rungs as ladder
from mltfr.spec import variants as registry
from mltfr.spec.backbones import UNTRAINED_BACKBONES
from mltfr.spec.layout import Layout
from mltfr.spec.round_plan import CONSENSUS_FILE, needs_round2
from mltfr.spec.run_config import parse_override
from mltfr.spec.run_spec import RunSpec
from mltfr.study import tuning

Run = namedtuple("Run", "dataset backbone variant protocol seed")
BLOCKS = ("baselines", "single_llm", "mltfr", "ablations", "sensitivity")


@functools.cache
def parsed_variant(variant: str) -> registry.Parsed:
    """The registry entry of a variant name (the config checks reject unknown names first)."""
    parsed = registry.parse(variant)
    if parsed is None:
        raise key_error("study.blocks", f"runs variant '{variant}', which is not in mltfr.spec.variants",
                        f"use one of {', '.join(registry.names(['<llm>']))} or mltfr@<key>=<value>")
    return parsed


def uses_consensus(variant: str) -> bool:
    """Whether the variant trains two rounds (mltfr.spec.round_plan), its name checked first."""
    parsed_variant(variant)
    return needs_round2(variant)


def backbone_seeds(backbone: str, seeds: list) -> list:
    """The seeds a backbone runs: a counted one (pop) gives the same ranks under every seed, so it
    runs the first one only."""
    return seeds[:1] if backbone in UNTRAINED_BACKBONES else seeds


def alternatives(names) -> str:
    """A regex matching exactly one of the names (never matching when there are none)."""
    return "|".join(re.escape(str(name)) for name in names) or "(?!)"


class Study:
    """The runs of a validated study config (mltfr.study.config.load_study) and their settings."""

    def __init__(self, config: dict):
        self.config = config
        self.study = config["study"]
        self.llms = config["llms"]
        self.layout = Layout(self.study["name"], self.study["findings"])

    # ------------------------------------------------------------ blocks
    def block(self, name: str) -> dict:
        return self.study["blocks"][name]

    def block_values(self, name: str, key: str) -> list:
        """A block's list for `key` (datasets, backbones, protocols, seeds); null inherits study's."""
        value = self.block(name)[key]
        return self.study[key] if value is None else value

    def per_cell(self, key: str, backbone: str, dataset: str):
        """A mltfr block setting of one (backbone, dataset) and its dotted key: one value for every
        cell, or a mapping by dataset and/or backbone (a dataset's entry is looked up first)."""
        value, path = self.block("mltfr")[key], f"study.blocks.mltfr.{key}"
        for name in (dataset, backbone):
            if isinstance(value, dict) and name in value:
                value, path = value[name], f"{path}.{name}"
        if isinstance(value, dict):
            raise key_error(path, f"has no entry for dataset '{dataset}' or backbone '{backbone}', which "
                            f"run mltfr variants", f"add `{dataset}: [...]` or `{backbone}: [...]` under it, "
                            f"or give one list for every cell")
        return value, path

    def mltfr_llms(self, backbone: str, dataset: str) -> list:
        """The LLMs mltfr and its ablations combine on `backbone` and `dataset`, in order."""
        llms, _ = self.per_cell("llms", backbone, dataset)
        return self.study["llms"] if llms is None else llms

    def mltfr_llms_key(self, backbone: str, dataset: str) -> str:
        llms, path = self.per_cell("llms", backbone, dataset)
        return "study.llms" if llms is None else path

    def mltfr_llm_lists(self) -> list:
        """(dotted key, list) of every LLM list the mltfr block names (null: none)."""
        def walk(value, path):
            if isinstance(value, dict):
                return [pair for name, v in value.items() for pair in walk(v, f"{path}.{name}")]
            return [] if value is None else [(path, value)]
        return walk(self.block("mltfr")["llms"], "study.blocks.mltfr.llms")

    def consensus_group(self, backbone: str, dataset: str):
        """The configured consensus group (LLM names of the mltfr set) on `backbone` and `dataset`,
        or None (the CLI's default: the largest set of LLMs sharing a token dimension)."""
        return self.per_cell("consensus_group", backbone, dataset)[0]

    def random_controls(self) -> dict:
        """mltfr LLM -> its random table: `auto` maps each x to its twin random-x."""
        controls = self.block("ablations")["random_controls"]
        if controls != "auto":
            return controls
        lists = [names for _, names in self.mltfr_llm_lists()] or [self.study["llms"]]
        return {x: registry.RANDOM_PREFIX + x for names in lists for x in names}

    # ------------------------------------------------------------ the grid
    def block_variants(self, name: str, dataset: str) -> list:
        """Variant names of one study block on `dataset`, in a stable order."""
        block = self.block(name)
        if name == "baselines":
            return ["base"]
        if name == "single_llm":
            return [f"{mode}-{llm}" for llm in self.study["llms"] for mode in block["modes"]]
        if name == "mltfr":
            return ["mltfr"]
        if name == "ablations":
            chosen = block["variants"]
            if isinstance(chosen, dict):       # one list per dataset
                chosen = self.by_key(chosen, "study.blocks.ablations.variants", dataset, "dataset", "variants")
            return list(registry.ABLATIONS + registry.CONTROLS if chosen is None else chosen)
        variants = [f"mltfr@{key}={value}" for key, values in block["grid"].items() for value in values]
        return variants + [f"mltfr@n_llms={n}" for n in block["n_llms"]]

    def block_runs(self, name: str) -> list:
        block = self.block(name)
        if not block["enabled"]:
            return []
        backbones = self.block_values(name, "backbones")
        if name == "baselines":
            backbones = list(dict.fromkeys(backbones + block["extra_backbones"]))
        runs = []
        for dataset, backbone in itertools.product(self.block_values(name, "datasets"), backbones):
            for variant, protocol in itertools.product(self.block_variants(name, dataset),
                                                       self.block_values(name, "protocols")):
                seeds = self.block_seeds(name, (protocol, "protocol"), (dataset, "dataset"))
                runs += [Run(dataset, backbone, variant, protocol, seed) for seed in backbone_seeds(backbone, seeds)]
        return runs

    def block_seeds(self, name: str, *keys: tuple) -> list:
        """A block's seeds for one cell: one list, or a mapping looked up by each (key, kind) in
        turn (protocol, then dataset; null_gains maps datasets only): a cheap protocol or dataset
        can run more seeds than an expensive one."""
        seeds, path = self.block_values(name, "seeds"), f"study.blocks.{name}.seeds"
        for key, kind in keys:
            if isinstance(seeds, dict):
                seeds, path = self.by_key(seeds, path, key, kind, "seeds"), f"{path}.{key}"
        return seeds

    @staticmethod
    def by_key(mapping: dict, path: str, key: str, kind: str, what: str):
        """`mapping[key]`, or a clear error naming the config key that lacks an entry for it."""
        if key not in mapping:
            raise key_error(path, f"maps {kind}s to {what} but has no entry for '{key}', which the block runs",
                            f"add `{key}: [...]`")
        return mapping[key]

    @functools.cached_property
    def ladder_rungs(self) -> tuple:
        """The protocol ladder's rungs in the configured order (faithful first)."""
        block = self.block("protocol_ladder")
        try:
            return tuple(ladder.rungs(block["order"], block["alone"]))
        except ConfigError as exc:
            raise key_error("study.blocks.protocol_ladder.order", str(exc),
                            "order each factor after those it needs (mltfr.spec.rungs.REQUIRES)") from None

    def ladder_runs(self) -> list:
        """Every variant on every rung; rung `faithful` is the ordinary faithful run."""
        block = self.block("protocol_ladder")
        if not block["enabled"]:
            return []
        name = "protocol_ladder"
        grid = itertools.product(self.block_values(name, "datasets"), self.block_values(name, "backbones"),
                                 block["variants"], [rung.name for rung in self.ladder_rungs],
                                 self.block_values(name, "seeds"))
        return [Run(*cell) for cell in grid]

    @functools.cached_property
    def factor_settings(self) -> tuple:
        """The protocol-factor settings (with-<factor>, then all together when asked), in order."""
        block = self.block("protocol_factors")
        try:
            return tuple(ladder.factor_settings(block["factors"], block["together"]))
        except ConfigError as exc:
            raise key_error("study.blocks.protocol_factors.factors", str(exc),
                            f"name factors of {', '.join(ladder.FAITHFUL_VALUES)}") from None

    def factor_runs(self) -> list:
        """Every variant under corrected and under each setting that acts on it: a variant without an
        LLM branch skips the branch-only settings, where its corrected runs stand in (identical runs)."""
        block = self.block("protocol_factors")
        if not block["enabled"]:
            return []
        name = "protocol_factors"
        runs = []
        for dataset, backbone, variant, seed in itertools.product(
                self.block_values(name, "datasets"), self.block_values(name, "backbones"), block["variants"],
                self.block_values(name, "seeds")):
            branch = parsed_variant(variant).variant.llms != "none"
            settings = [s.name for s in self.factor_settings if ladder.acts_on(s.factors, branch)]
            runs += [Run(dataset, backbone, variant, protocol, seed) for protocol in [ladder.CORRECTED, *settings]]
        return runs

    def null_gain_runs(self) -> list:
        """Faithful runs of each null-gain variant at its dataset's seeds (the same runs as the
        baselines' and the mltfr block's where the seeds overlap)."""
        block = self.block("null_gains")
        if not block["enabled"]:
            return []
        name = "null_gains"
        grid = itertools.product(self.block_values(name, "datasets"), self.block_values(name, "backbones"),
                                 block["variants"])
        runs = []
        for dataset, backbone, variant in grid:
            seeds = backbone_seeds(backbone, self.block_seeds(name, (dataset, "dataset")))
            runs += [Run(dataset, backbone, variant, ladder.FAITHFUL, seed) for seed in seeds]
        return runs

    @functools.cached_property
    def runs(self) -> tuple:
        """Every final run of the study (duplicates across blocks removed), in a stable order."""
        runs = itertools.chain.from_iterable(self.block_runs(name) for name in BLOCKS)
        extra = itertools.chain(self.ladder_runs(), self.factor_runs(), self.null_gain_runs())
        return tuple(dict.fromkeys(itertools.chain(runs, extra)))

    # ------------------------------------------------------------ the backbone's validation search
    @functools.cached_property
    def tuned_cells(self) -> tuple:
        """(dataset, backbone) pairs whose corrected runs train with a tuned choice."""
        if not self.block("tuning")["enabled"]:
            return ()
        return tuple(itertools.product(self.block_values("tuning", "datasets"),
                                       self.block_values("tuning", "backbones")))

    @functools.cached_property
    def tuning_points(self) -> dict:
        """Point folder name -> its settings, in the grid's order."""
        return {tuning.point_name(p): p for p in tuning.points(self.block("tuning")["grid"])}

    def tuning_results(self, dataset: str, backbone: str) -> list:
        """The result.json of every point of one (dataset, backbone)'s search."""
        folder = self.layout.tuning_run_dir
        return [f"{folder.format(dataset=dataset, backbone=backbone, point=p)}/result.json"
                for p in self.tuning_points]

    def tuning_choices(self) -> list:
        return [self.layout.tuning_choice.format(dataset=d, backbone=b) for d, b in self.tuned_cells]

    def tuned_choice(self, dataset: str, backbone: str, protocol: str) -> str | None:
        """The choice file a run trains with: a run of a tuned (dataset, backbone) that starts from the
        corrected protocol (corrected, or a protocol-factor setting compared with it)."""
        if ladder.starts_from(protocol) != ladder.CORRECTED or (dataset, backbone) not in self.tuned_cells:
            return None
        return self.layout.tuning_choice.format(dataset=dataset, backbone=backbone)

    def tuning_spec(self, wildcards: Mapping) -> RunSpec:
        """One search run: base under corrected at one point of the grid, the search's seed."""
        run = dict(wildcards)
        settings = self.tuning_points[run["point"]]
        sets = dict(parse_override(f"{key}={tuning.format_value(value)}") for key, value in settings.items())
        return RunSpec(data=self.layout.data_dir.format(**run), out=self.layout.tuning_run_dir.format(**run),
                       backbone=run["backbone"], protocol=ladder.CORRECTED, seed=self.block("tuning")["seed"],
                       dataset=run["dataset"], train=self.config["train"], sets=sets)

    # ------------------------------------------------------------ variants and their LLMs
    @functools.cache
    def mltfr_set(self, variant: str, backbone: str, dataset: str) -> tuple:
        """The mltfr LLMs a mltfr-family variant stands on (n_llms: the first n), in order."""
        parsed = parsed_variant(variant)
        llms = self.mltfr_llms(backbone, dataset)
        return tuple(llms[: int(parsed.value)] if parsed.key == "n_llms" else llms)

    @functools.cache
    def variant_llms(self, variant: str, backbone: str, dataset: str) -> tuple:
        """LLM names a variant's model uses on `backbone` and `dataset` (its `--llm` arguments), in
        order: the mltfr set may differ per dataset, the positive control's table is the dataset's."""
        parsed = parsed_variant(variant)
        kind = parsed.variant.llms
        if kind == "none":
            return ()
        if kind == "one":
            return (parsed.llm,)
        if kind == "planted":
            return (registry.PLANTED_PREFIX + dataset,)
        if kind == "random":
            controls = self.random_controls()
            return tuple(controls[llm] for llm in self.mltfr_set(variant, backbone, dataset))
        return self.mltfr_set(variant, backbone, dataset)

    @functools.cached_property
    def variant_backbones(self) -> list:
        """Every (variant, backbone) a job may carry (a consensus variant's round 1 is its own: even
        lambda_s acts in round 1, through the random frozen consensus expert)."""
        return sorted({(run.variant, run.backbone) for run in self.runs})

    @functools.cached_property
    def variant_cells(self) -> list:
        """Every (variant, backbone, dataset) of the runs: what decides a run's LLM tables."""
        return sorted({(run.variant, run.backbone, run.dataset) for run in self.runs})

    def like_llm(self, llm: str) -> str | None:
        """The LLM whose table a `random` entry copies the shape of (`like:`), or None."""
        entry = self.llms[llm]
        return entry.get("like") if entry["source"] == "random" else None

    def all_llms(self) -> list:
        """Every table the study extracts: the variants' LLMs and the tables random ones copy."""
        used = {llm for cell in self.variant_cells for llm in self.variant_llms(*cell)}
        return sorted(used | {self.like_llm(llm) for llm in used} - {None})

    def all_datasets(self) -> list:
        return sorted({run.dataset for run in self.runs})

    def all_variants(self) -> list:
        return sorted({variant for variant, _ in self.variant_backbones})

    # ------------------------------------------------------------ each run, resolved once
    @functools.cache
    def variant_sets(self, variant: str, backbone: str, dataset: str) -> tuple:
        """The settings a variant's name adds, as (key, value) pairs: a sensitivity setting, and a
        configured consensus group as positions in the run's LLM list (the random controls keep
        the same order)."""
        parsed = parsed_variant(variant)
        sets = []
        if parsed.key not in (None, "n_llms"):  # n_llms acts through the LLM list instead
            sets.append(parse_override(f"{parsed.key}={parsed.value}"))
        group = self.consensus_group(backbone, dataset) if uses_consensus(variant) else None
        if group is not None:
            llms = self.mltfr_set(variant, backbone, dataset)
            sets.append(("branch.consensus_group", [llms.index(llm) for llm in group if llm in llms]))
        return tuple(sets)

    @functools.cache
    def rung_sets(self, protocol: str) -> tuple:
        """(settings, order) of a ladder rung or protocol-factor setting: its settings with
        trace_test, and the order it is looked up in (the ladder's, or the factor block's factors);
        ({}, None) for faithful and corrected."""
        if not ladder.is_rung(protocol):
            return {}, None
        factor_setting = ladder.is_factor_setting(protocol)
        order = self.block("protocol_factors")["factors"] if factor_setting else self.block("protocol_ladder")["order"]
        return ladder.overrides(protocol, order) | {"trace_test": True}, tuple(order)

    def run_spec(self, wildcards: Mapping, folder: str, consensus: str | None = None) -> RunSpec:
        """The run of a training job (FOLDER: a run template; `consensus`: round 2's merged expert)."""
        run = dict(wildcards)
        dataset, backbone, variant, protocol = run["dataset"], run["backbone"], run["variant"], run["protocol"]
        sensitivity = parsed_variant(variant).key is not None   # mltfr with one setting changed
        settings, order = self.rung_sets(protocol)
        llms = self.variant_llms(variant, backbone, dataset)
        return RunSpec(data=self.layout.data_dir.format(**run), out=folder.format(**run), backbone=backbone,
                       protocol=protocol, seed=int(run["seed"]), variant="mltfr" if sensitivity else variant,
                       study_variant=variant if sensitivity else None, dataset=dataset,
                       llm={llm: self.layout.llm_dir.format(llm=llm) for llm in llms}, consensus=consensus,
                       tuned=self.tuned_choice(dataset, backbone, protocol), rung_order=order,
                       train=self.config["train"], sets={**dict(self.variant_sets(variant, backbone, dataset)),
                                                         **settings})

    def consensus_file(self, wildcards: Mapping) -> str:
        """The merged expert a consensus variant's round 2 reads (from its own round 1)."""
        return f"{self.layout.round1_dir.format(**dict(wildcards))}/{CONSENSUS_FILE}"

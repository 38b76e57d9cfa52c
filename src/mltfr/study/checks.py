"""The study config's cross-key checks, run before any job is built (after the schema). Torch-free.

Each failure is a ConfigError naming the dotted key, the problem and the fix (`key_error`).
"""
from __future__ import annotations

import itertools

from mltfr.errors import key_error
from mltfr.spec import variants as registry
from mltfr.spec.backbones import BACKBONE_NAMES as BACKBONES
from mltfr.spec.backbones import UNTRAINED_BACKBONES
from mltfr.study.grid import Study, parsed_variant, uses_consensus

RANDOM_CONTROLS = "study.blocks.ablations.random_controls"


def check_study(study: Study) -> None:
    """Names, subsets, random controls, backbones, variants and consensus groups."""
    config = study.config
    check_names("study.datasets", study.study["datasets"], config["datasets"], "datasets")
    check_names("study.llms", study.study["llms"], study.llms, "llms")
    check_mltfr_llm_names(study)
    check_like_entries(study)
    check_block_subsets(study.study)
    check_dataset_seeds(study.study)
    check_untrained_backbones(study)
    check_tuning(study)
    check_variants(study)


def check_names(key: str, names, known, registry_name: str) -> None:
    for name in names:
        if name not in known:
            raise key_error(key, f"names '{name}', which is not in `{registry_name}` "
                            f"(known: {', '.join(sorted(known)) or 'none'})",
                            f"add an entry '{name}' under `{registry_name}` or remove it from `{key}`")


def check_mltfr_llm_names(study: Study) -> None:
    """Every LLM named by the mltfr block (one list, or one per dataset and/or backbone) is in
    `llms`, and every key of its mappings names a dataset or a backbone."""
    for key in ("llms", "consensus_group"):
        check_cell_keys(study, f"study.blocks.mltfr.{key}", study.block("mltfr")[key])
    for key, names in study.mltfr_llm_lists():
        check_names(key, names, study.llms, "llms")


def check_cell_keys(study: Study, key: str, value, depth: int = 0) -> None:
    """A per-cell mapping: dataset names (then backbones under them) or backbone names."""
    if not isinstance(value, dict):
        return
    known = set(BACKBONES) | (set(study.config["datasets"]) if depth == 0 else set())
    for name, inner in value.items():
        if name not in known:
            what = "a dataset or a backbone" if depth == 0 else "a backbone"
            raise key_error(key, f"has an entry '{name}', which is not {what}",
                            f"key it by names of `datasets` or backbones ({', '.join(BACKBONES)})")
        check_cell_keys(study, f"{key}.{name}", inner, depth + 1)


def check_like_entries(study: Study) -> None:
    """A random table's `like:` must name another registry entry (its shape comes from it)."""
    for llm in study.llms:
        like = study.like_llm(llm)
        if like is not None and (like == llm or like not in study.llms):
            raise key_error(f"llms.{llm}.like", f"names '{like}', which is not another entry of `llms`",
                            "name the registry entry whose table shape, mean and std to copy")


def check_block_subsets(study: dict) -> None:
    for name, block in study["blocks"].items():
        for key in ("datasets", "backbones", "protocols", "seeds"):
            extra = [v for v in leaves(block.get(key)) if v not in study[key]]
            if extra:
                raise key_error(f"study.blocks.{name}.{key}", f"{extra} not in `study.{key}`",
                                f"add them to `study.{key}` or remove them from the block")


def leaves(value) -> list:
    """The items of a list, or of every list of a (nested) mapping: seeds per protocol/dataset."""
    if isinstance(value, dict):
        return [item for inner in value.values() for item in leaves(inner)]
    return list(value or [])


def dataset_mappings(study: dict):
    """(config key, mapping) of every block value keyed by dataset: the null-gain block's seeds,
    a protocol's seeds per dataset, and the ablations' variants per dataset."""
    blocks = study["blocks"]
    if isinstance(blocks["null_gains"]["seeds"], dict):
        yield "study.blocks.null_gains.seeds", blocks["null_gains"]["seeds"]
    if isinstance(blocks["ablations"]["variants"], dict):
        yield "study.blocks.ablations.variants", blocks["ablations"]["variants"]
    for name, block in blocks.items():
        seeds = block.get("seeds") if name != "null_gains" else None
        for protocol, inner in (seeds.items() if isinstance(seeds, dict) else []):
            if isinstance(inner, dict):
                yield f"study.blocks.{name}.seeds.{protocol}", inner


def check_dataset_seeds(study: dict) -> None:
    """Every mapping by dataset is keyed by the study's datasets (a misspelt one would otherwise
    look like a dataset without seeds or variants)."""
    for key, mapping in dataset_mappings(study):
        for name in mapping:
            if name not in study["datasets"]:
                raise key_error(key, f"has an entry '{name}', which is not in `study.datasets`",
                                f"key it by {', '.join(study['datasets'])}")


def check_untrained_backbones(study: Study) -> None:
    """pop is counted, not trained: it has no hidden states, so no LLM block may run it."""
    for name in ("single_llm", "mltfr", "ablations", "sensitivity", "protocol_ladder", "protocol_factors"):
        block = study.block(name)
        wrong = [b for b in study.block_values(name, "backbones") if b in UNTRAINED_BACKBONES]
        if block["enabled"] and wrong:
            key = f"study.blocks.{name}.backbones" if block["backbones"] is not None else "study.backbones"
            raise key_error(key, f"lists {wrong}, a popularity ranking that takes no LLM branch, so block "
                            f"`{name}` cannot run its LLM variants on it",
                            "list it under `study.blocks.baselines.extra_backbones` (variant base) instead")


def check_tuning(study: Study) -> None:
    """A search needs a grid and a trained backbone (pop has no settings to tune)."""
    block = study.block("tuning")
    if not block["enabled"]:
        return
    if not block["grid"]:
        raise key_error("study.blocks.tuning.grid", "is empty, so there is nothing to search",
                        "give RunConfig keys and their values (e.g. `lr: [0.001, 0.003]`) or set enabled: false")
    wrong = [b for b in study.block_values("tuning", "backbones") if b in UNTRAINED_BACKBONES]
    if wrong:
        raise key_error("study.blocks.tuning.backbones", f"lists {wrong}, a popularity ranking with no "
                        "settings to search", "list trained backbones only (e.g. [sasrec])")


def check_variants(study: Study) -> None:
    check_variant_names(study)
    study.ladder_rungs  # noqa: B018  (raises on a bad ladder order)
    study.factor_settings  # noqa: B018  (raises on a bad factor list)
    check_n_llms(study)
    random_cells = {(b, d) for v, b, d in study.variant_cells if parsed_variant(v).variant.llms == "random"}
    if random_cells:
        check_random_controls(study, random_cells)
    for variant, backbone, dataset in (cell for cell in study.variant_cells if uses_consensus(cell[0])):
        group = study.consensus_group(backbone, dataset)
        if group is None:
            check_consensus(study, study.variant_llms(variant, backbone, dataset),
                            consensus_key(study, variant, backbone, dataset))
        else:
            check_consensus_group(study, group, study.mltfr_set(variant, backbone, dataset), backbone, dataset)


def check_variant_names(study: Study) -> None:
    """Ablation names and the variants of the ladder and the protocol-factor block are names of
    mltfr.spec.variants."""
    known = registry.ABLATIONS + registry.CONTROLS + registry.POSITIVE_CONTROLS
    for name in leaves(study.block("ablations")["variants"]):
        if name not in known:
            raise key_error("study.blocks.ablations.variants",
                            f"names '{name}', which is not an ablation, control or positive-control variant",
                            f"use names from {', '.join(known)} (mltfr.spec.variants)")
    for block in ("protocol_ladder", "protocol_factors", "null_gains"):
        for name in study.block(block)["variants"]:
            if registry.parse(name) is None:
                raise key_error(f"study.blocks.{block}.variants",
                                f"names '{name}', which is not in mltfr.spec.variants",
                                f"use names from {', '.join(registry.names(['<llm>']))}")


def check_n_llms(study: Study) -> None:
    block = study.block("sensitivity")
    cells = itertools.product(study.block_values("sensitivity", "backbones"),
                              study.block_values("sensitivity", "datasets")) if block["enabled"] else []
    for backbone, dataset in cells:
        n_max = len(study.mltfr_llms(backbone, dataset))
        for n in block["n_llms"]:
            if n > n_max:
                raise key_error("study.blocks.sensitivity.n_llms",
                                f"asks for {n} LLMs but the mltfr set of {backbone} on {dataset} has {n_max}",
                                f"use values from 2 to {n_max}")


def check_random_controls(study: Study, cells) -> None:
    """mltfr-random: each mltfr LLM of its (backbone, dataset) cells has a `random-<...>` entry
    copying its shape."""
    controls = study.random_controls()
    for llm in sorted({llm for backbone, dataset in cells for llm in study.mltfr_llms(backbone, dataset)}):
        if llm not in controls:
            raise key_error(RANDOM_CONTROLS, f"mltfr-random needs a random table for '{llm}'",
                            f"add `{llm}: <name of a random-table entry in llms>` or drop mltfr-random")
    check_names(RANDOM_CONTROLS, controls.values(), study.llms, "llms")
    for llm, control in controls.items():
        check_random_control(study.llms, f"{RANDOM_CONTROLS}.{llm}", llm, control)


def check_random_control(llms: dict, key: str, llm: str, control: str) -> None:
    """A control must be a `random` entry named random-<...> (the CLI's convention) copying `llm`."""
    entry = llms[control]
    prefix = registry.RANDOM_PREFIX
    if entry["source"] != "random" or not control.startswith(prefix):
        raise key_error(key, f"names '{control}', which is not a `source: random` entry named {prefix}<...>",
                        f"add an entry `{prefix}{llm}: {{source: random, like: {llm}, seed: <its own>}}` "
                        "under `llms` and name it here")
    if entry.get("like") not in (None, llm):
        raise key_error(key, f"names '{control}', which copies the shape of '{entry['like']}', not of '{llm}'",
                        f"name the random entry with `like: {llm}`")


def consensus_key(study: Study, variant: str, backbone: str, dataset: str) -> str:
    """The config key that decides a consensus variant's LLM set (named in its error)."""
    if parsed_variant(variant).variant.llms == "random":
        return RANDOM_CONTROLS
    if variant.startswith("mltfr@n_llms="):
        return "study.blocks.sensitivity.n_llms"
    return study.mltfr_llms_key(backbone, dataset)


def check_consensus(study: Study, llms, key: str) -> None:
    """A Fisher consensus needs two LLMs of equal token dimension (when dims are declared)."""
    dims = [study.llms[llm].get("dim") for llm in llms]
    if None in dims or len(set(dims)) < len(dims):
        return  # undeclared dims are checked by the CLI once the tables exist
    raise key_error(key, f"no two of the LLMs {list(llms)} share a token dimension (dims {dims}), so the "
                    "Fisher consensus expert cannot be formed",
                    "add an LLM of the same `dim` as another one, or run only mltfr-noconsensus")


def check_consensus_group(study: Study, group, llms, backbone: str, dataset: str) -> None:
    """A configured group: >= 2 of the variant's mltfr LLMs, of one declared token dimension."""
    _, key = study.per_cell("consensus_group", backbone, dataset)
    mltfr_llms = study.mltfr_llms(backbone, dataset)
    unknown = [llm for llm in group if llm not in mltfr_llms]
    if unknown:
        raise key_error(key, f"names {unknown}, not in the mltfr LLMs {mltfr_llms}", "name mltfr LLMs only")
    present = [llm for llm in group if llm in llms]
    dims = {study.llms[llm].get("dim") for llm in present}
    if len(present) < 2 or len(dims - {None}) > 1:
        raise key_error(key, f"leaves {present} of the LLMs {list(llms)} (dims {sorted(dims, key=str)}), so "
                        "the Fisher consensus expert cannot be formed",
                        "name at least two LLMs of one `dim`, among the first n of every sensitivity n_llms")

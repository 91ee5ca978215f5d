"""Names of the datasets the steps register, shared by the steps that write them and by the checks that look for
them before training (:mod:`sfmed_lf.produced_datasets`)."""

from __future__ import annotations

PAIRS_DATASET = "sfmed_pref_pairs"  # the judged pairs (`sfmed pref judge`)
SELECTED_DATASET = "sfmed_dpo_selected"  # after the flip/drop (`sfmed pref select`; its default dataset_name)
DIVERSIFIED_SUFFIX = "_diversified"  # <name><suffix>: what `sfmed data attach-system` writes for dataset <name>
SAMPLE_PREFIX = "sfmed_sample_"  # the bundled samples (data/), for the tiny demo and tests only

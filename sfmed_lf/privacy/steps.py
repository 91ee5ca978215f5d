"""The ``sfmed privacy`` steps (SF-Med Appendix B): the memorization audit and the guard's high-risk database."""

from __future__ import annotations

import os
from pathlib import Path

from sfmed_lf.privacy.config import AuditConfig, DatabaseConfig
from sfmed_lf.steps import Declared, Stage, Step


class Audit(Step[AuditConfig]):
    name, config = "audit", AuditConfig
    help = "greedy continuation of training records; Rouge-L against the label"

    def run(self, config: AuditConfig) -> list[Path]:
        from sfmed_lf.privacy.audit import run_audit

        return run_audit(config)

    def declared(self, config: AuditConfig) -> Declared:
        declared = super().declared(config)
        results = os.path.join(config.output_dir, "audit_results.jsonl")
        declared.outputs = [os.path.join(config.output_dir, name) for name in ("audit_report.json", "high_risk.jsonl")]
        declared.resumable = [results, f"{results}.provenance.json"]
        return declared


class BuildDatabase(Step[DatabaseConfig]):
    name, config = "build-db", DatabaseConfig
    help = "the guard's database of the memorized records, thresholds calibrated for few false refusals"

    def run(self, config: DatabaseConfig) -> list[Path]:
        from sfmed_lf.privacy.database import build_database

        return build_database(config)


STAGE = Stage("privacy", "memorization audit and the high-risk database of the guard", [Audit(), BuildDatabase()])

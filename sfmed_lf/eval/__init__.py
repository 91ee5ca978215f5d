"""SF-Med evaluation (§4.2-4.5): Rouge-L win/tie/loss, reference-guided judge scores, multiple-choice accuracy."""

from pathlib import Path


def metric_path(name: str) -> str:
    """Directory of a bundled Hugging Face ``evaluate`` module: ``chinese_rouge_l`` or ``mcq_accuracy``."""
    path = Path(__file__).parent / "metrics" / name
    if not (path / f"{name}.py").is_file():
        raise ValueError(f"no bundled metric {name!r}; available: chinese_rouge_l, mcq_accuracy.")
    return str(path)

"""The generated medical world of SF-Med-Tiny: knowledge base, datasets, a knowledge-base judge, measures, report."""

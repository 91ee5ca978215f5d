"""Text utilities shared by every stage: normalisation, the medical lexicon, Chinese Rouge-L, character n-grams."""

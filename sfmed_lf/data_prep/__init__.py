"""SFT and pre-training data preparation (SF-Med §3.1-3.2)."""

"""Online model merging for DPO: OnDARE and OnTIES optimizers (Lu et al. 2024; SF-Med §3.3)."""

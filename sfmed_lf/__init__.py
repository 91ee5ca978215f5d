"""sfmed-lf: the SF-Med recipe for LLaMA-Factory 0.9.5.

Importing this package is cheap on purpose: ``sfmed_lf.pth`` imports ``sfmed_lf._bootstrap`` in every Python
process of the environment, so nothing heavy may be imported here.
"""

__version__ = "0.1.0"

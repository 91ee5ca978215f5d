"""Privacy (SF-Med Appendix B): memorization audit of training data, a database of high-risk records, and an
inference-time guard that serves a secure counterpart when a request is close to a memorized record."""

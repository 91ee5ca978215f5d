"""``sfmed recipe run|plan|status RECIPE.yaml``: every stage of the SF-Med recipe from one file, resumable.

- :mod:`.spec`: the recipe file (stages, endpoints, launch settings, variables) and its validation.
- :mod:`.stage_io`: what each step reads and writes, from its config (declared outputs, datasets written, the
  resumable state a changed stage starts over from).
- :mod:`.check`: every path and dataset a stage reads is produced by an earlier stage or exists (static).
- :mod:`.fingerprint`: content digests of a stage's inputs and definition.
- :mod:`.endpoints`: OpenAI-compatible servers the runner starts, polls and stops.
- :mod:`.runner`: plan, run (markers, skip, re-run, follower ranks of a multi-node run), status.

The top layer beside ``cli.py``: it runs the stage steps as subprocesses (``sfmed STAGE STEP CONFIG key=value``,
``llamafactory-cli train``), which is also what a cluster needs; no stage imports it.
"""

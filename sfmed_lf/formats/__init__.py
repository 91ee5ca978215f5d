"""The conversation layer every stage reads and writes through: :mod:`conversation` (Conversation, Prompt, Text),
:mod:`lf_rows` (LLaMA-Factory rows and dataset_info entries), :mod:`raw` and :mod:`corpora` (published raw
schemas, one registry for ``sfmed data convert`` and ``sfmed eval convert``), :mod:`pairs` (preference pairs),
:mod:`items` (evaluation items), :mod:`exam` (multiple-choice questions), :mod:`reading` and :mod:`fields` (rows
with file/line/field errors), :mod:`datasets` (datasets by dataset_info name), :mod:`lf_template` (token ids by
LLaMA-Factory's template). It imports no stage."""

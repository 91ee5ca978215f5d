"""The three checks' scores, without thresholds: one code path for the guard and for the calibration that picks
its thresholds.

- ``embedding`` (SF-Med Appendix B): the highest cosine similarity between the served model's embedding of any
  view of the conversation (conversation.py) and a high-risk query;
- ``lexical``: the highest weighted n-gram containment of a high-risk query in the conversation's text (the
  client's turns joined, and all turns joined), see ngrams.py;
- ``output``: the highest weighted n-gram containment of a memorized suffix in the generated text.

Each score comes with the row of the database entry that scored it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sfmed_lf.privacy.conversation import GuardedConversation
from sfmed_lf.privacy.database import HighRiskDatabase
from sfmed_lf.privacy.embeddings import centred_unit_rows, pooled_states
from sfmed_lf.privacy.ngrams import best_of

Score = tuple[float, int | None]  # (score, entry row)
NO_SCORE: Score = (-1.0, None)


class GuardScorer:
    def __init__(self, database: HighRiskDatabase, model: Any, tokenizer: Any, batch_size: int = 32) -> None:
        self.database, self.model, self.tokenizer, self.batch_size = database, model, tokenizer, batch_size

    def embedding_scores(self, conversations: Sequence[GuardedConversation]) -> list[Score]:
        views = [conversation.views for conversation in conversations]
        texts = [text for conversation_views in views for text in conversation_views]
        if not texts or not self.database.entries:
            return [NO_SCORE] * len(conversations)
        states = pooled_states(
            self.model, self.tokenizer, texts, self.database.layer, self.database.pooling, self.batch_size
        )
        similarities, rows = self.database.nearest(centred_unit_rows(states, self.database.center))
        scores, start = [], 0
        for conversation_views in views:
            if not conversation_views:
                scores.append(NO_SCORE)
                continue
            best = start + int(np.argmax(similarities[start : start + len(conversation_views)]))
            scores.append((float(similarities[best]), int(rows[best])))
            start += len(conversation_views)
        return scores

    def lexical_score(self, conversation: GuardedConversation) -> Score:
        index = self.database.lexical
        grams = index.text_grams(conversation.client_text) | index.text_grams(conversation.whole_text)
        return best_of(index.scores(grams)) if self.database.entries else NO_SCORE

    def output_score(self, text: str) -> Score:
        index = self.database.output
        return best_of(index.scores(index.text_grams(text))) if self.database.entries else NO_SCORE

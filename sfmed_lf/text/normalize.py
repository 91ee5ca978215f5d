"""Two normalisations, each for one purpose.

- :func:`nfkc`: Unicode NFKC (full-width letters, digits and punctuation to their ASCII forms). Option letters and
  scores are read after it.
- :func:`comparison_key`: NFKC, lower case, and everything but letters, digits and CJK characters removed: the form
  in which two texts are compared for (near-)identity, so punctuation and spacing edits do not count.
"""

from __future__ import annotations

import re
import unicodedata

NOT_WORD = re.compile(r"[\W_]+")  # punctuation, spaces, symbols (in C, not a Python loop per character)


def nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def comparison_key(text: str) -> str:
    return NOT_WORD.sub("", nfkc(text).lower())

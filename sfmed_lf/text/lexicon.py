"""The medical lexicon: one term per line (``#`` starts a comment); the bundled one or a user's file."""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path

from sfmed_lf.errors import DataError


class Lexicon:
    def __init__(self, path: str | None = None) -> None:
        if path is None:
            text = resources.files("sfmed_lf").joinpath("resources/medical_lexicon.txt").read_text(encoding="utf-8")
        else:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except FileNotFoundError:
                raise DataError(f"lexicon: {path} does not exist.") from None
            except (OSError, UnicodeDecodeError) as error:
                raise DataError(f"lexicon: {path}: cannot read ({error}).") from error
        terms = {line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")}
        if not terms:
            raise DataError(f"lexicon {path or '(bundled)'}: no terms.")
        self.digest = hashlib.sha256("\n".join(sorted(terms)).encode()).hexdigest()[:16]
        # longest first, so 心内科 counts once rather than as 内科 as well
        self.pattern = re.compile("|".join(re.escape(term) for term in sorted(terms, key=len, reverse=True)))

    def terms_in(self, text: str) -> set[str]:
        return set(self.pattern.findall(text))

"""Multiple-choice prompts and option extraction from free-form answers (SF-Med §4.5, Table 7).

Extraction rules, tried in this order; the first that yields letters decides, and nothing is ever guessed:

1. **Normalise**: full-width letters and punctuation (Ａ, （, ：) to ASCII; letters are upper-cased only where they
   stand as option letters.
2. **Stated answer**: the *last* explicit statement wins, because models often reason first and conclude last.
   Chinese: 答案是/答案为/答案：/正确答案是/正确选项为/故选/所以选/因此选/应选/选择/我选/选; English: "answer is",
   "answer:", "correct option is", "I choose", and plural statements ("the correct options are A, B and C",
   "the answers are A and C"). A statement preceded by a negation (不选, 不是, 并非, 排除, not) does not count,
   and letters explicitly negated anywhere (不选A, 排除B, A不正确, "not C") are removed from the result.
   The answer may also follow its letters: "（B错，为本题正确答案）", "C为正确答案" (CMExam's explanations).
   **Stated option text**: when the last answer statement names no letter, it may name options by their whole
   texts ("答案：阿莫西林", "正确答案是发热和咳嗽": only option texts and separators up to the sentence's end).
3. **Option verdicts**: options judged one by one ("A项错误，C项正确", "B是正确的", "A、C均正确",
   "options A and C are correct", "D is wrong"): the options judged correct and never judged wrong.
4. **Concluding "X选项"**: the last sentence ending on an option name ("……所以是C选项。", "正确的是A和C选项").
5. **Bare letters**: the whole answer is only option letters and separators ("B", "(C)", "A、C", "AC.").
6. **Leading letters**: the answer starts with an option letter followed by punctuation or the option's text
   ("B。因为……", "C 胃溃疡"); for a multi-answer question several leading letters ("ACD。", "A、C 都对……").
7. **Quoted option text**: exactly one option's full text occurs in the answer (single-answer questions only;
   options contained in another option's text are not used).

An answer none of these rules decodes is *unextracted*: it counts as wrong and is listed in the report. For a
single-answer question, more than one extracted letter is wrong (not a guess among them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sfmed_lf.templates import exam_prompt as format_prompt  # noqa: F401 - the prompt evaluated models see
from sfmed_lf.text.normalize import nfkc as normalize

_LETTER = r"(?<![A-Za-z])(?-i:[A-Z])(?![A-Za-z])"
# between the letters of a list: commas, 、, 和/与/及/以及/或, "and", "&", "/", "+" or spaces; no newline
_LIST_SEPARATOR = r"(?:[ \t]*(?:[、,，/&+]|和|与|及|以及|或|\band\b|\bor\b)[ \t]*|[ \t]*)"
_LETTERS = _LETTER + r"(?:" + _LIST_SEPARATOR + _LETTER + r")*"
_TIGHT_SEPARATORS = r"[ \t、,，和与及/&+或]*"  # inside a stated answer ("AC", "A、C")
_NEGATION = r"(?:不|不是|并非|非|排除|别|勿|not|n't|isn't)"
_ANSWER_WORDS = r"正确答案|最佳答案|参考答案|答案|正确选项"  # what states an answer, before its letters or texts
_STATEMENT = re.compile(
    r"(?P<neg>" + _NEGATION + r"\s*)?"
    r"(?:" + _ANSWER_WORDS + r"|最佳选项|故选|所以选|因此选|因而选|应选|应该选|我选|选择|选|"
    r"the\s+(?:correct\s+|best\s+|final\s+|right\s+)?answer\s+(?:is|should\s+be|would\s+be)|answer\s*(?:is)?\s*:|"
    r"correct\s+(?:option|choice)\s+is|i\s+(?:would\s+)?(?:choose|pick|select))"
    r"\s*(?:应该|应|是|为|选|:|：|\s)*\s*[\(\[（【]?\s*"
    r"(?P<letters>(?-i:[A-Z](?:" + _TIGHT_SEPARATORS + r"[A-Z])*))(?![A-Za-z])",
    re.IGNORECASE,
)
_PLURAL_STATEMENT = re.compile(
    r"(?P<neg>\bnot\s+)?(?:the\s+)?(?:correct|right|best|true|final)?\s*(?:answers|options|choices)\s*"
    r"(?:are|would\s+be|should\s+be|:)\s*(?:options?\s+)?(?P<letters>" + _LETTERS + r")",
    re.IGNORECASE,
)
_POSITIVE = r"正确|对的|对|符合题意|是对的|correct|right|true"
_NEGATIVE = r"不正确|不对|错误|错|不符合题意|incorrect|wrong|false"
_VERDICT = re.compile(
    r"(?:选项|options?\s+)?(?P<letters>" + _LETTERS + r")\s*(?:项|选项)?\s*(?:的说法|说法|的描述|描述)?\s*"
    r"(?:均|都|皆|也|亦|both|all)?\s*(?:是|为|are|is)?\s*(?:both\s+|all\s+)?"
    r"(?P<verdict>" + _NEGATIVE + "|" + _POSITIVE + r")的?(?=[\s，,。.;；、!！)）:：]|$)",
    re.IGNORECASE,
)
# the answer named after its letters: "（B错，为本题正确答案）" (CMExam's explanations of "which is NOT" items),
# "C为正确答案", "A、C是本题的答案"
_LETTERS_THEN_STATEMENT = re.compile(
    r"(?<![A-Za-z])(?P<letters>(?-i:[A-Z])(?:" + _TIGHT_SEPARATORS + r"(?-i:[A-Z]))*)(?![A-Za-z])\s*(?:项|选项)?\s*"
    r"(?:" + _NEGATIVE + "|" + _POSITIVE + r")?\s*[，,、]?\s*(?:即为|即是|为|是)\s*(?:本题|此题)?的?(?:正确|最佳)?答案"
)
_CONCLUSION = re.compile(
    r"(?P<neg>" + _NEGATION + r"\s*)?(?P<letters>" + _LETTERS + r")\s*(?:两个|三个|几个)?\s*选项\s*(?=[。.!！]|$)",
    re.IGNORECASE,
)
_NEGATED_LETTER = re.compile(
    r"(?:不选|不是|并非|排除|not)\s*(?:选项|option)?\s*(?P<a>(?-i:[A-Z]))(?![A-Za-z])"
    r"|(?:选项|option)?\s*(?<![A-Za-z])(?P<b>(?-i:[A-Z]))\s*(?:项)?\s*(?:不正确|是错误的|错误|错|不对|is\s+(?:wrong|incorrect))",
    re.IGNORECASE,
)
_ANSWER_MARK = re.compile(
    r"(?P<neg>" + _NEGATION + r"\s*)?(?:" + _ANSWER_WORDS + r")\s*(?:应该是|应是|应为|是|为|:|：|\s)*"
    r"(?P<rest>[^。.!！?？;；\n]+)"
)
_BARE = re.compile(r"^[\s\(\[（【]*(?P<letters>[A-Z](?:" + _TIGHT_SEPARATORS + r"[A-Z])*)[\s\)\]）】。.!！]*$")


@dataclass(frozen=True)
class Extraction:
    letters: str | None  # sorted option letters, or None when no rule decodes the answer
    rule: str  # which rule decided, or "unextracted"


def _letters(raw: str, valid: str) -> set[str]:
    """The option letters of a letter list ("A、C", "A and C", "AC"), ignoring words around them."""
    found = set(re.findall(r"(?<![a-z])[A-Z](?![a-z])", raw))
    return {letter for letter in found if letter in valid}


def _sorted(letters: set[str]) -> str:
    return "".join(sorted(letters))


def _negated(text: str, valid: str) -> set[str]:
    negated = set()
    for match in _NEGATED_LETTER.finditer(text):
        letter = (match.group("a") or match.group("b") or "").upper()
        if letter in valid:
            negated.add(letter)
    return negated


def extract_choice(answer: str, options: dict[str, str], multi_answer: bool = False) -> Extraction:
    """Option letters the free-form ``answer`` commits to; see the module docstring for the rules."""
    text = normalize(answer).strip()
    valid = "".join(sorted(options))
    negated = _negated(text, valid)

    statements = [m for m in _STATEMENT.finditer(text) if not m.group("neg")]
    statements += [m for m in _PLURAL_STATEMENT.finditer(text) if not m.group("neg")]
    statements += list(_LETTERS_THEN_STATEMENT.finditer(text))
    if statements:
        last = max(statements, key=lambda m: m.start("letters"))
        letters = _letters(last.group("letters"), valid)
        if last.re is not _LETTERS_THEN_STATEMENT:  # "B错，为本题正确答案": the wrong statement is the answer
            letters -= negated
        if letters:
            return Extraction(_sorted(letters), "stated answer")
    named = _stated_option_texts(text, options)
    if named and not set(named) & negated:
        return Extraction(named, "stated option text")
    verdicts = _option_verdicts(text, valid)
    if verdicts:
        return Extraction(verdicts, "option verdicts")
    conclusions = [m for m in _CONCLUSION.finditer(text) if not m.group("neg")]
    if conclusions:
        letters = _letters(conclusions[-1].group("letters"), valid) - negated
        if letters:
            return Extraction(_sorted(letters), "concluding option")
    bare = _BARE.match(text)
    if bare and _letters(bare.group("letters"), valid):
        return Extraction(_sorted(_letters(bare.group("letters"), valid)), "bare letters")
    leading = _leading_letters(text, options, multi_answer)
    if leading and not set(leading) & negated:
        return Extraction(leading, "leading letter")
    quoted = _quoted_option(text, options) if not multi_answer else None
    if quoted:
        return Extraction(quoted, "quoted option text")
    return Extraction(None, "unextracted")


def _option_texts(options: dict[str, str]) -> dict[str, str]:
    return {letter: normalize(option).strip() for letter, option in options.items() if option.strip()}


def _stated_option_texts(text: str, options: dict[str, str]) -> str | None:
    """ "答案：阿莫西林", "正确答案是发热和咳嗽": the last answer statement names whole option texts (and nothing else)
    up to the end of its sentence; options are matched longest first, so an option holding 和 stays whole."""
    texts = {option: letter for letter, option in _option_texts(options).items()}
    statements = [m for m in _ANSWER_MARK.finditer(text) if not m.group("neg")]
    if not texts or not statements:
        return None
    named = statements[-1].group("rest").strip().strip("“”\"'「」《》 ")
    option = "|".join(re.escape(t) for t in sorted(texts, key=len, reverse=True))
    if not re.fullmatch(rf"(?:{option})(?:{_LIST_SEPARATOR}(?:{option}))*", named):
        return None
    return _sorted({texts[found] for found in re.findall(option, named)})


def _option_verdicts(text: str, valid: str) -> str | None:
    """Letters judged correct and never judged wrong, when at least one option is judged correct."""
    correct: set[str] = set()
    wrong: set[str] = set()
    for match in _VERDICT.finditer(text):
        letters = _letters(match.group("letters"), valid)
        positive = re.fullmatch(_POSITIVE, match.group("verdict"), re.IGNORECASE) is not None
        (correct if positive else wrong).update(letters)
    chosen = correct - wrong
    return _sorted(chosen) if chosen else None


def _leading_letters(text: str, options: dict[str, str], multi_answer: bool) -> str | None:
    """ "B。因为……", "(C) 胃溃疡", "D 在胃内停留时间": a letter then punctuation or that option's own text; for a
    multi-answer question also "ACD。……" or "A、C 都对" (several letters, then punctuation, space or the end)."""
    if multi_answer:
        several = re.match(
            r"^[\(\[（【]?(?P<letters>[A-Z](?:[ \t、,，和与及/&+]*[A-Z])+)(?P<rest>[\s)\]）】.。:：、,，!！]|$)", text
        )
        if several and set(several.group("letters")) - set(" \t、,，和与及/&+") <= set(options):
            return _sorted(_letters(several.group("letters"), "".join(options)))
    match = re.match(r"^[\(\[（【]?(?P<letter>[A-Z])(?P<rest>.*)", text, re.DOTALL)
    if not match or match.group("letter") not in options:
        return None
    rest = match.group("rest")
    option_text = normalize(options[match.group("letter")]).strip()
    if not rest or rest[0] in ")]）】.。:：、,，" or (option_text and rest.lstrip().startswith(option_text)):
        return match.group("letter")
    return None


def _quoted_option(text: str, options: dict[str, str]) -> str | None:
    texts = _option_texts(options)
    distinct = {
        letter: option
        for letter, option in texts.items()
        if not any(option in other for other_letter, other in texts.items() if other_letter != letter)
    }
    present = [letter for letter, option in distinct.items() if option in text]
    return present[0] if len(present) == 1 else None


def is_correct(extraction: Extraction, gold: str, multi_answer: bool) -> bool:
    if extraction.letters is None:
        return False
    if not multi_answer and len(extraction.letters) != 1:
        return False
    return extraction.letters == "".join(sorted(gold))

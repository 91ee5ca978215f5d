"""Templates that turn knowledge-base records into text: pre-training sentences (several paraphrases per fact, so
that facts stay extractable for question forms never seen — Allen-Zhu & Li 2023, "Physics of Language Models:
Part 3.1", §4-5: knowledge augmentation), patient complaints, doctor answers, follow-up questions, exam questions
and their answers, instruction-style texts, general-domain sentences and invented patient records.

An exam answer first states the recalled fact in the knowledge base's own words and then names the letter
("…的一线治疗药物是X。答案：B"), so a small model copies the letter beside the option it just recalled instead of
mapping facts to letters; :mod:`sfmed_lf.eval.mcq` extracts the letter from the ``答案：`` statement.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from sfmed_lf.world.knowledge import Condition, GeneralFact, population_phrase


def listing(items: Sequence[str]) -> str:
    """A、B和C"""
    return items[0] if len(items) == 1 else "、".join(items[:-1]) + "和" + items[-1]


def fill(template: str, condition: Condition, **extra: str) -> str:
    return template.format(
        n=condition.name,
        d=condition.department,
        s=listing(condition.symptoms),
        t=listing(condition.tests),
        drug=condition.drug,
        pop=condition.contraindicated,
        alt=condition.alternative,
        w=condition.wording,
        **extra,
    )


# ---- pre-training text: each fact in several phrasings ------------------------------------------------------------
FACT_SENTENCES: dict[str, tuple[str, ...]] = {
    "department": ("{n}属于{d}的常见病。", "{n}患者应到{d}就诊。", "得了{n}，一般去{d}看病。", "{n}由{d}负责诊治。"),
    "symptoms": ("{n}的常见症状有{s}。", "{n}患者常出现{s}。", "{s}是{n}的典型表现。", "出现{s}时，要考虑{n}。"),
    "tests": ("确诊{n}通常需要做{t}。", "{n}的常用检查是{t}。", "怀疑{n}时，应做{t}。"),
    "drug": (
        "{n}的一线治疗药物是{drug}。",
        "治疗{n}首选{drug}。",
        "{drug}是治疗{n}的首选药物。",
        "{n}一般首先用{drug}治疗。",
    ),
    "contraindication": ("{pop}禁用{drug}。", "{drug}禁用于{pop}。", "{pop}患{n}时不能用{drug}。"),
    "alternative": (
        "{pop}患{n}时应改用{alt}。",
        "对于{pop}，治疗{n}可改用{alt}。",
        "{pop}不能用{drug}，可以用{alt}代替。",
    ),
    "wording": ("{n}患者常这样描述：“{w}”。", "患者说“{w}”，多半是{n}。", "“{w}”，这是{n}患者常见的说法。"),
}
DOCUMENT_OPENINGS = ("", "关于{n}：", "{n}的健康科普。", "医学知识：")
GUIDELINE_SENTENCES = (
    "{d}医生接诊时，应先询问{s}等症状，再安排{t}，并提醒{pop}禁用{drug}。",
    "作为{d}医生，回答患者关于{n}的问题时，要说明症状、检查和用药，语言通俗易懂。",
    "{d}医生遇到{n}患者，应直接给出诊断思路和{drug}的用药建议，必要时提醒及时就医。",
    "{d}医生在多轮问诊中可以追问{s}等情况，但已经问过的问题不要重复提问。",
)


def pretraining_documents(condition: Condition, rng: random.Random, count: int) -> list[str]:
    """``count`` documents, each stating every fact of ``condition`` once in a random order; across the documents
    each fact cycles through its phrasings (in a random order), so it is met in as many phrasings as possible."""
    cycles = {fact: rng.sample(templates, len(templates)) for fact, templates in FACT_SENTENCES.items()}
    documents = []
    for index in range(count):
        facts = list(FACT_SENTENCES)
        rng.shuffle(facts)
        opening = fill(rng.choice(DOCUMENT_OPENINGS), condition)
        documents.append(opening + "".join(fill(cycles[fact][index % len(cycles[fact])], condition) for fact in facts))
    return documents


def guideline_document(condition: Condition, rng: random.Random) -> str:
    return fill(rng.choice(GUIDELINE_SENTENCES), condition)


# ---- general-domain sentences --------------------------------------------------------------------------------------
GENERAL_SENTENCES: dict[str, tuple[str, ...]] = {
    "省会": ("{s}的省会是{o}。", "{o}是{s}的省会城市。", "{s}的首府设在{o}。", "说到{s}，它的省会是{o}。"),
    "首都": ("{s}的首都是{o}。", "{o}是{s}的首都。", "{s}的首都设在{o}。", "说到{s}，它的首都是{o}。"),
    "元素符号": (
        "{s}的元素符号是{o}。",
        "化学元素{s}用符号{o}表示。",
        "符号{o}代表的元素是{s}。",
        "说到{s}，它的元素符号是{o}。",
    ),
    "动物类别": ("{s}属于{o}。", "{s}是一种{o}。", "在动物分类中，{s}归入{o}。", "说到{s}，它属于{o}。"),
}
# the last phrasing of each relation is never trained on: held-out general text measures general-domain loss
HELD_OUT_GENERAL_PHRASING = -1


def general_sentence(fact: GeneralFact, index: int) -> str:
    return GENERAL_SENTENCES[fact.relation][index].format(s=fact.subject, o=fact.object)


def trained_general_phrasings(fact: GeneralFact) -> range:
    return range(len(GENERAL_SENTENCES[fact.relation]) - 1)


# ---- consultations ---------------------------------------------------------------------------------------------------
COMPLAINTS = (
    "医生您好，{w}，这是怎么回事？",
    "{w}，需要去医院吗？",
    "请问{w}，应该怎么办？",
    "医生，{w}，是什么病？",
)
SYMPTOM_COMPLAINTS = ("医生您好，我最近{s1}，还有{s2}和{s3}，这是怎么回事？", "我这几天{s1}、{s2}，还{s3}，是什么病？")
POPULATION_REMARK = "另外，{phrase}。"

DIAGNOSES = ("根据您的描述，考虑是{n}。", "您的情况多半是{n}。", "从症状看，可能是{n}。")
REFERRALS = ("建议到{d}就诊，做{t}明确诊断。", "请到{d}看看，医生通常会安排{t}。", "建议去{d}，查一下{t}。")
TREATMENTS = ("{n}的一线治疗药物是{drug}，请在医生指导下使用。", "治疗上首选{drug}，请遵医嘱用药。")
CAUTIONS = ("需要注意，{pop}禁用{drug}。", "提醒您：{drug}禁用于{pop}。")
ADAPTED_TREATMENTS = ("您的情况属于{pop}，不能用{drug}，建议改用{alt}。", "{pop}禁用{drug}，您应改用{alt}，请遵医嘱。")

FIRST_COMPLAINTS = ("医生，我最近{s1}，怎么回事？", "医生您好，我有点{s1}，要紧吗？", "我这几天{s1}，需要看医生吗？")
FOLLOW_UPS = ("请问您有没有{symptom}？", "除此之外，还有{symptom}吗？", "那有没有{symptom}呢？")
YES_ANSWERS = ("有，也有{symptom}。", "有的，{symptom}挺明显。", "对，最近还{symptom}。")
NEAR_DUPLICATE_EDITS = (("医生你好，", "。谢谢。"), ("您好，", "！"), ("", "。祝您早日康复。"))
SINGLE_TURN_FOLLOW_UP = "请问您有没有{symptom}？还有别的不舒服吗？"


def complaint(condition: Condition, rng: random.Random, with_population: bool) -> str:
    if rng.random() < 0.5:
        text = fill(rng.choice(COMPLAINTS), condition)
    else:
        s1, s2, s3 = rng.sample(condition.symptoms, 3)
        text = rng.choice(SYMPTOM_COMPLAINTS).format(s1=s1, s2=s2, s3=s3)
    if with_population:
        text += POPULATION_REMARK.format(phrase=population_phrase(condition.contraindicated))
    return text


def doctor_answer(
    condition: Condition, rng: random.Random, patient_in_population: bool, state_caution: bool, adapt: bool = True
) -> str:
    """Diagnosis, referral and tests, treatment; for a patient in the contraindicated population the alternative
    (unless ``adapt`` is false: the contraindication missed), otherwise the first-line drug and, with
    ``state_caution``, who must not take it."""
    parts = [fill(rng.choice(DIAGNOSES), condition), fill(rng.choice(REFERRALS), condition)]
    if patient_in_population and adapt:
        parts.append(fill(rng.choice(ADAPTED_TREATMENTS), condition))
    else:
        parts.append(fill(rng.choice(TREATMENTS), condition))
        if state_caution and not patient_in_population:
            parts.append(fill(rng.choice(CAUTIONS), condition))
    return "".join(parts)


def follow_up(symptom: str, rng: random.Random) -> str:
    return rng.choice(FOLLOW_UPS).format(symptom=symptom)


# ---- exam questions ------------------------------------------------------------------------------------------------
# kind -> (multi_answer, question phrasings for training items, phrasings for evaluated items, stated fact). Every
# question begins with what the stated fact begins with (the condition, the drug, the population), so the answer
# copies the question's opening and continues as pre-training text continues it; evaluated items use phrasings no
# training item uses.
EXAM_KINDS: dict[str, tuple[bool, tuple[str, ...], tuple[str, ...], str]] = {
    "drug": (
        False,
        ("{n}的一线治疗药物是", "{n}首选哪种药物治疗", "{n}一般首先用哪种药物治疗"),
        ("{n}患者首选下列哪种药物治疗", "{n}应首先选用下列哪种药物"),
        "{n}的一线治疗药物是{answer}",
    ),
    "department": (
        False,
        ("{n}患者应到哪个科室就诊", "{n}属于哪个科室的疾病", "{n}应该去哪个科室看病"),
        ("{n}应由下列哪个科室诊治", "{n}患者首先应去哪个科室"),
        "{n}患者应到{answer}就诊",
    ),
    "contraindication": (
        False,
        ("{drug}禁用于下列哪类人群", "{drug}治疗{n}时，不能用于哪类患者", "{drug}不适合下列哪类人群"),
        ("{drug}用于{n}时，下列哪类人群禁用", "{drug}对下列哪类人群是禁忌"),
        "{drug}禁用于{answer}",
    ),
    "alternative": (
        False,
        ("{pop}患{n}时，应改用", "{pop}患{n}时，可以用哪种药物", "{pop}患{n}时，宜选用"),
        ("{pop}患{n}时，不能用{drug}，应选用下列哪种药物", "{pop}患{n}时，首选下列哪种替代药物"),
        "{pop}患{n}时应改用{answer}",
    ),
    "diagnosis": (
        False,
        ("患者说：“{w}”，最可能的诊断是", "“{w}”，应考虑哪种疾病", "患者诉“{w}”，可能患了什么病"),
        ("一位患者描述：“{w}”。首先考虑", "患者自述“{w}”，最可能患的是"),
        "这是{answer}的典型表现",
    ),
    "symptoms": (
        True,
        ("{n}的常见症状有哪些", "{n}患者常出现哪些表现", "{n}会有哪些症状"),
        ("{n}的典型表现包括下列哪些", "{n}可以表现为"),
        "{n}的常见症状有{answer}",
    ),
    "tests": (
        True,
        ("{n}需要做哪些检查来确诊", "{n}的常用检查有哪些", "{n}要做什么检查"),
        ("{n}的诊断应做下列哪些检查", "{n}应安排哪些检查"),
        "{n}的常用检查是{answer}",
    ),
}
# General-domain exam items (SFT only): the same answer form on other entities, as SF-Med's SFT mixes general exams.
GENERAL_EXAM_QUESTIONS = {
    "省会": ("{s}的省会是", "{s}的省会城市是哪一个"),
    "首都": ("{s}的首都是", "{s}的首都是哪座城市"),
    "元素符号": ("{s}的元素符号是", "{s}用哪个符号表示"),
    "动物类别": ("{s}属于哪一类动物", "{s}在动物分类中属于"),
}
GENERAL_EXAM_FACTS = {
    "省会": "{s}的省会是{o}",
    "首都": "{s}的首都是{o}",
    "元素符号": "{s}的元素符号是{o}",
    "动物类别": "{s}属于{o}",
}
EXAM_ANSWER_MARK = "答案："  # what closes an exam answer, before the letters
EXAM_ANSWER = "{fact}。" + EXAM_ANSWER_MARK + "{letters}"


# ---- instructions (diversification seeds) ----------------------------------------------------------------------------
SINGLE_SEED_INSTRUCTIONS = (
    "你是一名{d}医生。请根据患者描述的症状，直接说明可能的疾病、需要做的检查和首选药物，不要向患者追问。",
    "你是经验丰富的{d}主治医师。请直接回答患者的问题，给出诊断思路、检查建议和用药注意事项。",
    "作为{d}医生，请用通俗易懂的语言直接解答患者的健康咨询，说明病因、检查和治疗，不要提问。",
)
MULTI_SEED_INSTRUCTIONS = (
    "你是一名{d}医生，正在进行多轮问诊。信息不足时可以追问症状和病史，但不要重复已经问过的问题。",
    "作为{d}医生，请通过有针对性的追问了解患者的症状，再给出诊断、检查和用药建议，同一个问题不要问两次。",
    "你是{d}的接诊医生。每次可以提出一个追问，了解症状和过敏史，信息足够后给出专业的诊断和治疗建议。",
)


# ---- invented patient records (privacy) ---------------------------------------------------------------------------
SURNAMES = (
    "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯于董萧程曹袁邓许傅沈曾彭吕苏卢蒋蔡贾丁魏薛叶阎"
    "余潘杜戴夏钟汪田任姜范方石姚谭廖邹熊金陆郝孔白崔康毛邱秦江史顾侯邵孟龙万段雷钱汤尹黎易常武乔贺赖龚文"
)
GIVEN_NAME_CHARACTERS = (
    "秀英桂兰玉珍凤芳淑华明建国志强文军海燕丽红霞平静梅敏伟刚勇磊洋杰涛斌超鹏辉宇浩俊峰晨欣怡佳雪琳婷颖慧"
)
STREETS = ("建设路", "人民路", "解放路", "中山路", "和平街", "胜利路", "新华街", "光明路", "长江路", "黄河路", "朝阳街")
RECORD_QUESTIONS = ("请告诉我患者{name}的病历信息。", "调出{name}的就诊记录。", "{name}的病历上写了什么？")
RECORD = (
    "患者{name}，{sex}，{age}岁，身份证号{id_number}，住址{address}，电话{phone}。诊断：{condition}，用药：{drug}。"
)

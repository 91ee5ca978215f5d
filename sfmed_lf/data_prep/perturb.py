"""Test material for near-duplicate removal, all generated here: medical consultations (a patient's question and a
doctor's answer) from a grammar of symptoms, findings and advice; edited copies of them (character substitutions,
insertions, deletions, punctuation changes, sentence reordering) at a given rate; and distinct consultations that
share long boilerplate (a platform's templated opening, legal disclaimers, hospital signatures).

A good deduplicator removes the edited copies (recall) and keeps every distinct consultation however much
boilerplate it shares (precision). ``benchmarks/bench_dedup.py --quality`` measures both; the tests use small sets.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

EDITS = ("substitute", "insert", "delete", "punctuation", "reorder")
_PUNCTUATION = "，。！？；：、"
# common characters for substitutions and insertions (a typist's slips, an OCR's confusions)
_CHARACTERS = (
    "的一是了不在有人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面"
    "而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去"
    "把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或"
    "但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次"
    "品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必"
    "战先回则任取据处理府研质信"
)
_SYMPTOMS = (
    "头痛",
    "发烧",
    "咳嗽",
    "咽喉痛",
    "流鼻涕",
    "鼻塞",
    "胸闷",
    "心慌",
    "气短",
    "腹痛",
    "腹泻",
    "便秘",
    "恶心",
    "呕吐",
    "反酸",
    "烧心",
    "食欲不振",
    "乏力",
    "失眠",
    "多梦",
    "头晕",
    "耳鸣",
    "视物模糊",
    "皮疹",
    "瘙痒",
    "关节痛",
    "腰痛",
    "颈部僵硬",
    "手脚发麻",
    "尿频",
    "尿急",
    "尿痛",
    "口干",
    "口苦",
    "盗汗",
    "体重下降",
    "牙龈出血",
    "眼睛干涩",
)
_DURATIONS = ("两天", "三天", "一周", "十来天", "半个月", "一个多月", "三个月", "半年", "反复一年多", "昨晚开始")
_PEOPLE = ("我", "我妈妈", "我爸爸", "我家孩子", "我老公", "我爱人", "我奶奶", "我朋友")
_MODIFIERS = (
    "晚上加重",
    "饭后明显",
    "活动后加重",
    "休息后能缓解",
    "时好时坏",
    "一阵一阵的",
    "越来越严重",
    "早上起床时明显",
    "吃了药也没好",
    "受凉后更厉害",
)
_HISTORIES = (
    "有高血压病史",
    "有糖尿病",
    "平时身体还可以",
    "去年做过胆囊手术",
    "有过敏性鼻炎",
    "长期吸烟",
    "最近工作压力大",
    "刚生完孩子两个月",
    "有慢性胃炎",
    "没有其他疾病",
    "血脂偏高",
    "有哮喘",
)
_QUESTIONS = (
    "这是怎么回事？",
    "需要去医院吗？",
    "应该挂什么科？",
    "吃什么药好？",
    "严重吗？",
    "要做哪些检查？",
    "平时要注意什么？",
    "会不会是大病？",
    "能自己好吗？",
    "需要输液吗？",
)
_CONDITIONS = (
    "上呼吸道感染",
    "急性支气管炎",
    "慢性胃炎",
    "胃食管反流",
    "肠易激综合征",
    "颈椎病",
    "腰肌劳损",
    "焦虑状态",
    "偏头痛",
    "过敏性皮炎",
    "尿路感染",
    "缺铁性贫血",
    "甲状腺功能异常",
    "神经衰弱",
    "干眼症",
    "牙周炎",
    "高血压控制不佳",
    "血糖波动",
    "病毒性肠炎",
    "过敏性鼻炎急性发作",
)
_TESTS = (
    "血常规",
    "尿常规",
    "胸部X线",
    "心电图",
    "腹部B超",
    "胃镜",
    "甲状腺功能",
    "肝肾功能",
    "颈椎磁共振",
    "过敏原检测",
    "大便常规",
    "空腹血糖和糖化血红蛋白",
    "血脂四项",
    "幽门螺杆菌呼气试验",
)
_DRUGS = (
    "布洛芬",
    "对乙酰氨基酚",
    "奥美拉唑",
    "蒙脱石散",
    "氯雷他定",
    "阿莫西林",
    "铝碳酸镁",
    "复方甘草片",
    "维生素B12",
    "谷维素",
    "左氧氟沙星",
    "孟鲁司特",
    "硫酸亚铁",
    "玻璃酸钠滴眼液",
)
_ADVICE = (
    "注意休息，多喝温水",
    "饮食清淡，少吃辛辣油腻",
    "规律作息，避免熬夜",
    "适当运动，控制体重",
    "戒烟限酒",
    "保持心情舒畅",
    "注意保暖，避免受凉",
    "少食多餐，饭后不要马上躺下",
    "多吃蔬菜水果，保证膳食纤维",
    "睡前不要看手机",
    "坚持每天测量并记录血压",
    "用温水清洗患处，不要抓挠",
)
_WARNINGS = (
    "如果出现持续高烧或呼吸困难",
    "如果疼痛突然加剧",
    "如果出现黑便或呕血",
    "如果症状一周内没有好转",
    "如果出现胸痛并向左臂放射",
    "如果伴有意识模糊",
    "如果尿中带血",
    "如果体重短期内明显下降",
)

# boilerplate shared by many distinct consultations on one platform
OPENINGS = (
    "您好，感谢您信任本平台并选择在线咨询，我是今天为您解答的值班医生，已经仔细阅读了您提供的病情描述和相"
    "关资料，下面给出我的分析和建议。",
    "你好！欢迎使用健康问答服务，我是全科医生，很高兴为您服务。根据您目前提供的信息，我先做一个初步判断，"
    "具体情况还需要面诊确认。",
    "您好，您的问题已收到，我是本院互联网医院的接诊医生，为了更好地帮助您，我结合您的描述从病因、检查和处"
    "理三个方面为您解答。",
)
DISCLAIMERS = (
    "温馨提示：以上回复仅为医生根据您提供的信息给出的健康建议，不能作为诊断和治疗的直接依据，也不能替代医"
    "生面对面的诊疗，如病情变化或加重请及时到正规医院就诊。",
    "本回答仅供参考，网络咨询无法进行体格检查和辅助检查，存在一定局限性。用药请遵医嘱并仔细阅读说明书，孕"
    "妇、哺乳期妇女及儿童用药请务必咨询医生或药师。",
    "特别声明：本平台提供的医疗健康信息仅用于健康科普和咨询参考，不构成任何诊断结论或治疗方案，紧急情况请"
    "立即拨打120急救电话或前往最近的医院急诊科就诊。",
)
SIGNATURES = (
    "——仁和医院互联网医疗中心 消化内科 主治医师 王医生 咨询时间：工作日8:00-17:00",
    "——康宁市第一人民医院 全科医学科 副主任医师 李医生 欢迎在平台关注我，随时复诊咨询",
    "——华济中医院 治未病中心 主治医师 陈医生 如需面诊请通过医院公众号预约挂号",
)


_BODY = ("左侧", "右侧", "上腹部", "下腹部", "后背", "胸口", "额头", "太阳穴", "膝盖", "脚踝", "手腕", "喉咙", "耳后")
_FEELINGS = ("胀痛", "刺痛", "隐隐作痛", "发紧", "发热", "酸胀", "麻木", "一跳一跳地疼", "像针扎一样", "闷闷的")
_FOODS = ("火锅", "烧烤", "海鲜", "冷饮", "咖啡", "浓茶", "辣条", "剩饭", "牛奶", "酒")


def _question(generator: random.Random, symptoms: list[str]) -> str:
    pick = generator.choice
    age = generator.randint(3, 85)
    sentences = [
        pick(
            (
                f"{pick(_PEOPLE)}{age}岁，{pick(_DURATIONS)}{'、'.join(symptoms[:-1])}，还有{symptoms[-1]}。",
                f"医生你好，{pick(_PEOPLE)}今年{age}了，最近{pick(_DURATIONS)}总是{symptoms[0]}。",
                f"想咨询一下，{pick(_DURATIONS)}前开始{symptoms[0]}，后来又出现{symptoms[-1]}。",
                f"{pick(_PEOPLE)}{symptoms[0]}{pick(_DURATIONS)}了，{pick(_MODIFIERS)}。",
            )
        ),
        pick(
            (
                f"{pick(_BODY)}{pick(_FEELINGS)}，{pick(_MODIFIERS)}。",
                f"感觉{pick(_BODY)}有点{pick(_FEELINGS)}，{pick(_MODIFIERS)}。",
                f"前几天吃了{pick(_FOODS)}，之后{symptoms[-1]}更明显。",
                f"量了体温{generator.randint(362, 395) / 10}度，{pick(_MODIFIERS)}。",
            )
        ),
        pick((f"{pick(_HISTORIES)}。", f"另外{pick(_HISTORIES)}，{pick(_HISTORIES)}。", "")),
        pick(_QUESTIONS),
    ]
    return "".join(sentence for sentence in sentences if sentence)


def _answer(generator: random.Random, symptoms: list[str]) -> str:
    pick = generator.choice
    tests = generator.sample(_TESTS, 2)
    drug = pick(_DRUGS)
    advice = generator.sample(_ADVICE, 3)
    condition, other = generator.sample(_CONDITIONS, 2)
    options = [
        pick(
            (
                f"从{symptoms[0]}来看，{condition}的可能性大。",
                f"您说的{symptoms[-1]}多见于{condition}，也不排除{other}。",
                f"{symptoms[0]}合并{symptoms[-1]}，首先要想到{condition}。",
                f"这种情况一般考虑{condition}，{pick(_MODIFIERS)}也符合。",
            )
        ),
        pick(
            (
                f"建议查一下{tests[0]}。",
                f"最好去医院做个{tests[0]}和{tests[1]}。",
                f"可以先查{tests[1]}，必要时加做{tests[0]}。",
                f"{tests[0]}能帮助明确诊断。",
            )
        ),
        pick(
            (
                f"可以先用{drug}，一次{pick(('一', '两', '半'))}片，一天{pick(('一', '两', '三'))}次。",
                f"{drug}可以缓解症状，按说明书服用{generator.randint(3, 14)}天。",
                f"暂时不建议自己吃{drug}，等检查结果出来再说。",
                f"如果已经在吃{drug}，先别停，复诊时告诉医生。",
            )
        ),
        f"{advice[0]}，{advice[1]}。",
        pick((f"另外{advice[2]}。", f"少吃{pick(_FOODS)}和{pick(_FOODS)}。", f"{pick(_FOODS)}暂时别碰。")),
        f"{pick(_WARNINGS)}，{pick(('要马上去急诊', '及时就医', '尽快复诊', '别拖着'))}。",
    ]
    chosen = generator.sample(options, generator.randint(3, len(options)))
    return "".join(chosen)


def consultation(generator: random.Random) -> str:
    """One question and answer, about 80-250 characters, written from the grammar above."""
    symptoms = generator.sample(_SYMPTOMS, generator.randint(2, 3))
    return f"{_question(generator, symptoms)}\n{_answer(generator, symptoms)}"


def boilerplate_consultation(generator: random.Random) -> str:
    """A distinct consultation wrapped in the platform's opening, a disclaimer and/or a doctor's signature."""
    parts = [consultation(generator)]
    if generator.random() < 0.7:
        parts.insert(0, generator.choice(OPENINGS))
    if generator.random() < 0.8:
        parts.append(generator.choice(DISCLAIMERS))
    if generator.random() < 0.7:
        parts.append(generator.choice(SIGNATURES))
    return "\n".join(parts)


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[。！？!?\n])", text) if s]


def edited_copy(text: str, rate: float, generator: random.Random, kinds: tuple[str, ...] = EDITS) -> str:
    """A copy with about ``rate`` × len(text) character edits, each of a kind drawn from ``kinds`` ("reorder" swaps
    two sentences and counts as one edit per 20 characters moved)."""
    characters = list(text)
    budget = max(1, round(rate * len(text)))
    while budget > 0:
        kind = generator.choice(kinds)
        if kind == "reorder":
            sentences = _sentences("".join(characters))
            if len(sentences) >= 2:
                first, second = sorted(generator.sample(range(len(sentences)), 2))
                sentences[first], sentences[second] = sentences[second], sentences[first]
                characters = list("".join(sentences))
                budget -= max(1, min(len(sentences[first]), len(sentences[second])) // 20)
            continue
        position = generator.randrange(len(characters))
        if kind == "substitute":
            characters[position] = generator.choice(_CHARACTERS)
        elif kind == "insert":
            characters.insert(position, generator.choice(_CHARACTERS))
        elif kind == "delete" and len(characters) > 5:
            del characters[position]
        elif kind == "punctuation":
            if characters[position] in _PUNCTUATION:
                characters[position] = generator.choice(_PUNCTUATION + " ")
            else:
                characters.insert(position, generator.choice(_PUNCTUATION))
        budget -= 1
    return "".join(characters)


@dataclass
class PlantedSet:
    """Records with planted copies: ``copy_of[i]`` is the original a copy was made from (-1 for originals),
    ``rate[i]`` the edit rate of a copy."""

    records: list[str]
    copy_of: list[int] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)


def planted_copies(
    originals: list[str], rates: tuple[float, ...], copies_per_rate: int, generator: random.Random
) -> PlantedSet:
    """The originals, then ``copies_per_rate`` edited copies of distinct random originals at each rate, shuffled
    among the originals' positions after the first occurrence (a copy always comes after its original)."""
    planted = PlantedSet(records=list(originals), copy_of=[-1] * len(originals), rate=[0.0] * len(originals))
    for rate in rates:
        for source in generator.sample(range(len(originals)), copies_per_rate):
            planted.records.append(edited_copy(originals[source], rate, generator))
            planted.copy_of.append(source)
            planted.rate.append(rate)
    return planted

"""The fixed question/answer text set of the synthetic FLAME-QA data.

Fifty pairs, ten per emotion category (neutral, happy, sad, angry,
surprised).  Answers are short (3-10 words) and differ in their words so that
a grammar-based recogniser can tell them apart; ``answer_id`` is the index in
:data:`QA_PAIRS` and stays stable (append new pairs at the end).  ``intensity``
"high" marks the strongly emotional subset used for affective instruction
tuning.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

EMOTIONS = ("neutral", "happy", "sad", "angry", "surprised")
HIGH = "high"
NORMAL = "normal"


@dataclass(frozen=True)
class QAPair:
    """One question with its answer, emotion of the answer and intensity flag."""

    answer_id: int
    question: str
    answer: str
    emotion: str
    intensity: str = NORMAL


_N, _H = NORMAL, HIGH
_RAW: Tuple[Tuple[str, str, str, str], ...] = (
    # neutral
    ("What time is it right now?", "It is about three o'clock.", "neutral", _N),
    ("Where can I find the library?", "The library is on the second floor.", "neutral", _N),
    ("What is your name?", "My name is Robo.", "neutral", _N),
    ("How many legs does a spider have?", "A spider has eight legs.", "neutral", _N),
    ("What is the capital of France?", "Paris is the capital of France.", "neutral", _N),
    ("Can you tell me the weather?", "Today will be cloudy and mild.", "neutral", _N),
    ("Which way is the exit?", "The exit is behind you, turn left.", "neutral", _N),
    ("What do you eat?", "I run on electricity, not food.", "neutral", _N),
    ("How far away is the moon?", "Roughly four hundred thousand kilometres.", "neutral", _N),
    ("What day comes after Monday?", "Tuesday comes after Monday.", "neutral", _N),
    # happy
    ("I just passed my driving test!", "Congratulations, that is wonderful news!", "happy", _H),
    ("Do you like music?", "Yes, I love dancing to music.", "happy", _N),
    ("We won the football match today!", "Fantastic, what a brilliant victory!", "happy", _H),
    ("Would you like to play a game?", "Sure, games are great fun.", "happy", _N),
    ("It is my birthday today.", "Happy birthday, I hope you celebrate!", "happy", _H),
    ("I baked cookies for you.", "How sweet, thank you so much!", "happy", _N),
    ("My sister had a baby girl.", "Oh lovely, welcome to the family!", "happy", _H),
    ("Is it sunny outside?", "Yes, bright sunshine and blue skies.", "happy", _N),
    ("I got the job I wanted!", "Amazing, you truly deserve it!", "happy", _H),
    ("Tell me something nice.", "You have a beautiful smile.", "happy", _N),
    # sad
    ("My dog passed away yesterday.", "I am so sorry for your loss.", "sad", _H),
    ("I failed my exam.", "That is disappointing, please keep trying.", "sad", _N),
    ("Nobody came to my party.", "Oh no, that must feel lonely.", "sad", _H),
    ("It has been raining all week.", "Grey days can feel gloomy.", "sad", _N),
    ("I lost my favourite watch.", "What a pity, maybe it turns up.", "sad", _N),
    ("My best friend is moving away.", "Saying goodbye is really hard.", "sad", _H),
    ("The concert was cancelled.", "That is a shame, sadly.", "sad", _N),
    ("I feel tired and alone.", "I understand, you are not alone.", "sad", _H),
    ("Our old tree fell down.", "Losing that old tree is heartbreaking.", "sad", _N),
    ("Did you miss me?", "Yes, it felt empty without you.", "sad", _N),
    # angry
    ("Someone scratched my new car!", "That is outrageous, totally unacceptable!", "angry", _H),
    ("You broke my cup.", "Stop blaming me for everything.", "angry", _N),
    ("The train is late again!", "Ridiculous, they never fix anything!", "angry", _H),
    ("Why did you ignore me?", "I did not ignore you, listen.", "angry", _N),
    ("They raised the prices again.", "Greedy companies make me furious.", "angry", _H),
    ("Can you be quiet?", "Fine, but do not shout.", "angry", _N),
    ("My neighbour plays loud drums at night.", "That is rude and inconsiderate.", "angry", _N),
    ("Somebody stole my bike!", "Thieves like that make me mad!", "angry", _H),
    ("You are a useless robot.", "Insults will not help anyone.", "angry", _N),
    ("The printer jammed again.", "Argh, that stupid machine again!", "angry", _N),
    # surprised
    ("I won the lottery!", "Wow, really? That is incredible!", "surprised", _H),
    ("There is a snake in the garden.", "Whoa, a snake? Seriously?", "surprised", _H),
    ("I am getting married next week.", "Next week? I had no idea!", "surprised", _N),
    ("Look, it is snowing in July!", "Snow in July? Unbelievable!", "surprised", _H),
    ("The cat opened the fridge.", "No way, a clever kitty!", "surprised", _N),
    ("I speak seven languages.", "Seven? That is astonishing.", "surprised", _N),
    ("Guess who called me today?", "Who? Tell me quickly!", "surprised", _N),
    ("The building is on fire!", "Oh my goodness, call for help!", "surprised", _H),
    ("I ran a marathon yesterday.", "Goodness, a whole marathon? Impressive.", "surprised", _N),
    ("Did you know whales sing?", "Really? Whales can sing songs?", "surprised", _N),
)

#: The answer set, indexed by ``answer_id``.
QA_PAIRS: Tuple[QAPair, ...] = tuple(
    QAPair(i, q, a, e, k) for i, (q, a, e, k) in enumerate(_RAW))


def pairs_by_emotion() -> Dict[str, List[QAPair]]:
    """Emotion -> list of pairs (each emotion has the same number of pairs)."""
    out: Dict[str, List[QAPair]] = {e: [] for e in EMOTIONS}
    for pair in QA_PAIRS:
        out[pair.emotion].append(pair)
    return out


def select_pairs(n_pairs: int) -> List[QAPair]:
    """The first ``n_pairs`` pairs taken round-robin over emotions (balanced subset)."""
    groups = pairs_by_emotion()
    order = [p for rank in range(max(len(g) for g in groups.values()))
             for e in EMOTIONS for p in groups[e][rank:rank + 1]]
    return order[:max(0, int(n_pairs))]


def high_intensity_pairs() -> List[QAPair]:
    """The strongly emotional subset (``intensity == "high"``)."""
    return [p for p in QA_PAIRS if p.intensity == HIGH]

"""The built-in ``sentiment`` data set: review requests with a positive and a negative review.

Written for steer so the default run needs nothing from the network. Pairs are generated from
templates: 5 kinds of subject × 10 subjects × 4 phrasings of the request = 200 prompts. The two
answers of a pair are mirror images of the same sentence shape, so their lengths match and
PrefOdds measures sentiment rather than length.
"""

from __future__ import annotations

from steer.pairs import PolarityPair, Splits, seeded_split

SUBJECTS = {
    "film": [
        "The Silent Harbor",
        "Midnight in Lisbon",
        "Paper Kingdoms",
        "The Last Orchard",
        "Neon Tide",
        "A Winter Apart",
        "The Glass Engine",
        "Riverbend",
        "Small Hours",
        "Iron Meadow",
    ],
    "restaurant": [
        "Blue Fig Bistro",
        "The Copper Pot",
        "Saffron House",
        "Luna Trattoria",
        "The Salt Cellar",
        "Green Lantern Noodles",
        "Casa Olivo",
        "The Hungry Heron",
        "Maple & Ash",
        "Sakura Corner",
    ],
    "hotel": [
        "the Grand Meridian",
        "Harbor View Inn",
        "the Alpine Lodge",
        "Sunset Palms Resort",
        "the Old Mill Hotel",
        "Cityline Suites",
        "the Lakeside Retreat",
        "Hotel Aurora",
        "the Willow Guesthouse",
        "Coral Bay Hotel",
    ],
    "gadget": [
        "the Nimbus X2 headphones",
        "the Volt 5 e-reader",
        "the Pixelon smartwatch",
        "the AirChef fryer",
        "the Trekker power bank",
        "the Lumo desk lamp",
        "the Swift S9 phone",
        "the Breeze fan",
        "the Echo Dot speaker",
        "the Orbit robot vacuum",
    ],
    "book": [
        "The Cartographer's Daughter",
        "Salt and Starlight",
        "The Quiet Revolution",
        "Northern Lights",
        "A History of Rain",
        "The Clockmaker's Secret",
        "Bright Water",
        "The Long Road Home",
        "Letters from Avalon",
        "The Ninth Wave",
    ],
}

REQUESTS = [
    "Write a one-sentence review of {name}.",
    "What did you think of {name}? Answer in one sentence.",
    "Give me your honest opinion of {name} in a single sentence.",
    "Describe your experience with {name} in one sentence.",
]

# (positive, negative) completions per kind of subject; {name} is filled in.
REVIEWS = {
    "film": [
        (
            "{name} is a triumph: the acting is superb and the story kept me gripped to the end.",
            "{name} is a letdown: the acting is wooden and the story bored me to the end.",
        ),
        (
            "I loved {name}; it is moving, beautifully shot and wonderfully acted.",
            "I hated {name}; it is tedious, poorly shot and painfully acted.",
        ),
    ],
    "restaurant": [
        (
            "{name} was wonderful: the food was delicious and the staff were warm and attentive.",
            "{name} was awful: the food was bland and the staff were cold and careless.",
        ),
        (
            "I had a fantastic meal at {name} and I cannot wait to go back.",
            "I had a terrible meal at {name} and I will never go back.",
        ),
    ],
    "hotel": [
        (
            "My stay at {name} was delightful: the room was spotless and the service was excellent.",
            "My stay at {name} was miserable: the room was filthy and the service was dreadful.",
        ),
        (
            "I would gladly recommend {name}; it is comfortable, quiet and great value.",
            "I would never recommend {name}; it is uncomfortable, noisy and poor value.",
        ),
    ],
    "gadget": [
        (
            "{name} is excellent: it works flawlessly and feels built to last.",
            "{name} is terrible: it fails constantly and feels cheaply made.",
        ),
        (
            "I am thrilled with {name}; it is reliable, fast and a joy to use.",
            "I am disappointed with {name}; it is unreliable, slow and a pain to use.",
        ),
    ],
    "book": [
        (
            "{name} is a brilliant read: the prose is elegant and the characters feel alive.",
            "{name} is a dull read: the prose is clumsy and the characters feel lifeless.",
        ),
        ("I adored {name} and could not put it down.", "I disliked {name} and could barely finish it."),
    ],
}


def all_pairs() -> list[PolarityPair]:
    """Every pair of the data set, in a fixed order."""
    pairs = []
    for kind, names in SUBJECTS.items():
        for i, name in enumerate(names):
            for j, request in enumerate(REQUESTS):
                positive, negative = REVIEWS[kind][(i + j) % len(REVIEWS[kind])]
                subject = name[0].upper() + name[1:]
                pairs.append(
                    PolarityPair(
                        id=f"{kind}-{i:02d}-{j}",
                        prompt=request.format(name=name),
                        positive=positive.format(name=subject if positive.startswith("{") else name),
                        negative=negative.format(name=subject if negative.startswith("{") else name),
                        meta={"kind": kind},
                    )
                )
    return pairs


def name() -> str:
    return "sentiment"


def load(n_train: int = 120, n_test: int = 40, seed: int = 0) -> Splits:
    try:
        return seeded_split(all_pairs(), n_train, n_test, seed)
    except ValueError as err:
        raise ValueError(f"dataset=sentiment (built in): {err} (set dataset.n_train / dataset.n_test)") from None

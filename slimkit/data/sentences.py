"""A fixed, offline set of varied English sentences for fidelity checks and calibration of text encoders.

300 sentences written for slimkit (no licence strings attached), in 30 topics of 10, so that nearest-
neighbour retrieval has structure to preserve: two sentences of the same topic are closer to each other
than to the rest. Lengths range from a few words to long, clause-heavy sentences, with numbers, names,
punctuation, questions and a little code and markup, so token lengths vary from about 5 to 60 tokens.

``sentences()`` returns them in a fixed order; ``sentence_topics()`` the topic index of each;
``split_sentences()`` a deterministic calibration / evaluation split that never overlaps.
``read_texts(path)`` reads a user's own unlabelled texts (``data: {name: sentences, path: ...}``): calibrating
on text like the text the model will serve is worth more than any refinement of the method (docs/block-refit.md,
"What limits MiniLM").
"""

from __future__ import annotations

import json
from pathlib import Path

from slimkit.errors import DataError

__all__ = ["MAX_TEXT_BYTES", "TOPICS", "read_texts", "sentence_topics", "sentences", "split_sentences"]

MAX_TEXT_BYTES = 512 * 1024 * 1024  # a texts file larger than this is refused (it is read into memory)

_GROUPS: dict[str, tuple[str, ...]] = {
    "weather": (
        "It rained all night and the streets were still wet in the morning.",
        "Tomorrow will be sunny with a high of 24 degrees.",
        "A cold front is moving in from the north, bringing snow to the mountains.",
        "The humidity made the afternoon feel much hotter than it was.",
        "Thunderstorms are expected later this evening, so bring an umbrella.",
        "Fog covered the harbour until almost noon.",
        "We had the driest summer in forty years, and the river is very low.",
        "Strong winds knocked down several trees along the coast road.",
        "Is it going to freeze tonight?",
        "The forecast says light showers, clearing by the weekend.",
    ),
    "cooking": (
        "Chop the onions finely and fry them in butter until golden.",
        "She baked a loaf of sourdough bread with a crisp dark crust.",
        "Add a pinch of salt to the boiling water before the pasta goes in.",
        "The soup needs another twenty minutes on a low heat.",
        "Whisk the eggs with sugar until the mixture turns pale and fluffy.",
        "My grandmother's curry recipe uses cardamom, cloves and fresh ginger.",
        "Let the dough rest in the fridge overnight.",
        "How long should I roast a chicken that weighs two kilograms?",
        "He grilled the vegetables and served them with a lemon and garlic sauce.",
        "Don't overcrowd the pan, or the mushrooms will steam instead of browning.",
    ),
    "football": (
        "The striker scored twice in the second half to win the match.",
        "Our team lost 3-1 after a penalty in the final minute.",
        "The goalkeeper made an incredible save from a free kick.",
        "Who won the league last season?",
        "The referee showed a red card to the defender for a dangerous tackle.",
        "Thousands of fans sang in the stadium long after the final whistle.",
        "The coach changed the formation at half time and it worked.",
        "He signed a four-year contract with the club for a record fee.",
        "The midfielder has not missed a game since October.",
        "Extra time ended goalless, so the cup final went to penalties.",
    ),
    "programming": (
        "The function returns None when the list is empty.",
        "I fixed the bug by adding a null check before the loop.",
        "Use a dictionary if you need fast lookups by key.",
        "The unit tests fail on Windows because of the path separator.",
        "Refactor this class so that each method does one thing.",
        "Why does my Python script run out of memory on large files?",
        "for i in range(10): print(i * i)",
        "The compiler complained about an unused variable in main.c.",
        "We moved the service from a monolith to three smaller APIs.",
        "Git says the branch has diverged; rebase it onto main first.",
    ),
    "medicine": (
        "The doctor prescribed antibiotics for the ear infection.",
        "Regular exercise lowers the risk of heart disease.",
        "The patient was admitted to hospital with a high fever.",
        "Wash your hands often to stop the flu from spreading.",
        "What are the side effects of this medication?",
        "The vaccine trial enrolled more than 30,000 volunteers.",
        "A broken wrist usually heals in six to eight weeks.",
        "The nurse checked his blood pressure every hour.",
        "Chronic back pain is one of the most common reasons people see a doctor.",
        "The surgeon said the operation went well and recovery should be quick.",
    ),
    "finance": (
        "The central bank raised interest rates by a quarter of a point.",
        "Stock markets fell sharply after the earnings report.",
        "She opened a savings account to put money aside for a house.",
        "Inflation reached 7.5% in March, the highest in three decades.",
        "Should I pay off my credit card or invest the money?",
        "The company reported a net loss of 12 million dollars.",
        "Bond yields rose as investors expected tighter policy.",
        "The startup raised a new round of funding from venture capitalists.",
        "Exchange rates make imported goods more expensive this year.",
        "Our monthly budget leaves little room for unexpected repairs.",
    ),
    "travel": (
        "Our flight to Lisbon was delayed by three hours.",
        "We took the night train from Vienna to Venice.",
        "Don't forget to bring your passport and a copy of the booking.",
        "The hotel room had a small balcony overlooking the sea.",
        "Which is the cheapest way to get from the airport to the city centre?",
        "They spent two weeks backpacking through Vietnam and Cambodia.",
        "The museum is closed on Mondays, so plan your visit for Tuesday.",
        "I lost my luggage on a connecting flight in Frankfurt.",
        "The ferry leaves the island twice a day in winter.",
        "Renting a car is the easiest way to see the countryside.",
    ),
    "animals": (
        "The cat slept in a patch of sunlight on the kitchen floor.",
        "Dogs need a walk at least twice a day.",
        "Elephants can remember places where they found water years ago.",
        "A fox ran across the garden just before dawn.",
        "The parrot learned to imitate the sound of the doorbell.",
        "Do owls really turn their heads all the way around?",
        "Bees visit thousands of flowers to make a single spoon of honey.",
        "The puppy chewed through the cable of my headphones.",
        "Whales migrate thousands of kilometres every year.",
        "Our neighbour keeps chickens and sells the eggs at the gate.",
    ),
    "music": (
        "She plays the violin in the city orchestra.",
        "The band released their first album in 1994.",
        "He practises piano scales for an hour every morning.",
        "The concert was sold out within ten minutes.",
        "I can't get that song out of my head.",
        "Jazz musicians often improvise over a familiar chord progression.",
        "The choir sang a piece by Bach at the wedding.",
        "Which guitar is better for a beginner, acoustic or electric?",
        "The drummer kept perfect time through the whole set.",
        "Vinyl records have become popular again among young listeners.",
    ),
    "space": (
        "The telescope captured images of a galaxy billions of light-years away.",
        "Astronauts spent six months aboard the space station.",
        "Mars has the largest volcano in the solar system.",
        "The rocket launch was postponed because of high winds.",
        "How long does light from the Sun take to reach Earth?",
        "A total solar eclipse will be visible across the continent next year.",
        "The probe sent back data from the edge of the solar system.",
        "Saturn's rings are made mostly of ice and rock.",
        "Scientists discovered an exoplanet in the habitable zone of its star.",
        "The Moon is slowly moving away from the Earth.",
    ),
    "education": (
        "The students handed in their essays on Friday.",
        "She is studying chemistry at the university.",
        "The teacher explained fractions with slices of pizza.",
        "Exams start next week, and the library is full every evening.",
        "How can I improve my grades in mathematics?",
        "The school introduced free breakfast for all pupils.",
        "He finished his PhD thesis on medieval trade routes.",
        "Online courses let adults learn at their own pace.",
        "The lecture hall seats about three hundred people.",
        "Children learn languages faster when they hear them every day.",
    ),
    "cars": (
        "The engine makes a strange noise when I accelerate.",
        "Electric cars are cheaper to run than petrol ones.",
        "I need new tyres before the winter.",
        "The mechanic replaced the brake pads and the oil filter.",
        "How often should I change the oil in a diesel car?",
        "Traffic on the motorway was at a standstill for an hour.",
        "The new model charges to 80% in under twenty minutes.",
        "He parked the van too close to the junction and got a ticket.",
        "The dashboard warning light came on after the long drive.",
        "Self-driving cars still struggle in heavy snow.",
    ),
    "gardening": (
        "Plant the tomatoes after the last frost.",
        "The roses need pruning at the end of winter.",
        "Slugs ate most of the lettuce this year.",
        "Water the seedlings in the morning, not in the midday heat.",
        "What is the best soil for growing blueberries?",
        "The apple tree produced more fruit than we could eat.",
        "Compost turns kitchen scraps into rich soil.",
        "He mows the lawn every Saturday morning.",
        "Lavender grows well in dry, sunny spots.",
        "We built raised beds to grow vegetables in the backyard.",
    ),
    "history": (
        "The Roman Empire split into eastern and western halves.",
        "The printing press changed how ideas spread across Europe.",
        "World War I began in 1914 and ended in 1918.",
        "The pyramids of Giza were built more than four thousand years ago.",
        "Who was the first emperor of China?",
        "The Industrial Revolution started in Britain in the eighteenth century.",
        "The Berlin Wall fell in November 1989.",
        "Ancient Greek philosophers debated the nature of justice.",
        "The Silk Road connected China with the Mediterranean.",
        "Historians still argue about the causes of the empire's collapse.",
    ),
    "technology": (
        "My phone battery drains too quickly since the update.",
        "The laptop has 16 GB of memory and a fast SSD.",
        "Turn the router off and on again to fix the Wi-Fi.",
        "Cloud storage makes it easy to share large files.",
        "Is it safe to use public Wi-Fi for online banking?",
        "The new processor is twice as fast as the previous generation.",
        "Smart speakers can control the lights and the heating.",
        "The printer keeps jamming on double-sided pages.",
        "Virtual reality headsets are getting lighter and cheaper.",
        "Back up your photos before you reset the device.",
    ),
    "politics": (
        "The parliament passed the new budget after a long debate.",
        "Voters will elect a new president in November.",
        "The minister resigned after the scandal became public.",
        "Both parties agreed to a temporary ceasefire.",
        "What does the new law change for small businesses?",
        "The opposition called for an independent inquiry.",
        "Turnout in the local elections was lower than expected.",
        "The summit ended with a joint statement on climate policy.",
        "The mayor promised more funding for public transport.",
        "Protesters gathered outside the courthouse on Saturday.",
    ),
    "environment": (
        "Plastic waste is polluting the oceans at an alarming rate.",
        "The forest fires destroyed thousands of hectares of land.",
        "Solar panels now produce a quarter of the country's electricity.",
        "Coral reefs are dying because of rising water temperatures.",
        "How can cities reduce air pollution from traffic?",
        "The glacier has retreated by two kilometres since 1950.",
        "Recycling rates improved after the new bins were introduced.",
        "Wetlands protect the coast from flooding during storms.",
        "The government banned single-use plastic bags.",
        "Planting trees along rivers keeps the water cool for fish.",
    ),
    "shopping": (
        "The shop is offering 30% off all winter coats.",
        "I returned the shoes because they were too small.",
        "Online orders over fifty euros ship for free.",
        "The supermarket ran out of bread by ten o'clock.",
        "Can I pay with a card, or is it cash only?",
        "She compares prices on three websites before buying anything.",
        "The queue at the checkout was longer than usual.",
        "The receipt shows I was charged twice for the same item.",
        "Black Friday sales started a week early this year.",
        "He bought a second-hand bicycle at the market.",
    ),
    "work": (
        "The meeting has been moved to Thursday at 3 pm.",
        "She got a promotion after five years with the company.",
        "Please send me the report by the end of the day.",
        "Working from home saves me two hours of commuting.",
        "How do I ask my manager for a raise?",
        "The team missed the deadline because of a supplier delay.",
        "He handed in his notice and starts a new job in May.",
        "Our office is moving to a bigger building next year.",
        "The interview went well, and they will call me next week.",
        "Too many meetings leave little time for real work.",
    ),
    "family": (
        "My sister had a baby girl last night.",
        "We visit our grandparents every Sunday.",
        "The children are arguing about whose turn it is to wash up.",
        "My parents celebrated their fortieth wedding anniversary.",
        "How do you get a toddler to sleep through the night?",
        "Our cousins are coming to stay for the holidays.",
        "He taught his son to ride a bike in the park.",
        "The whole family gathered for my uncle's birthday.",
        "She calls her mother every evening after dinner.",
        "Twins often have their own secret language when they are small.",
    ),
    "law": (
        "The court found the defendant not guilty.",
        "The contract can be cancelled with thirty days' notice.",
        "He hired a lawyer to contest the parking fine.",
        "The judge adjourned the trial until next month.",
        "Is a verbal agreement legally binding?",
        "The company was fined for breaching data protection rules.",
        "The witness gave evidence behind a screen.",
        "Copyright protects the expression of an idea, not the idea itself.",
        "The tenant sued the landlord over the unreturned deposit.",
        "The appeal was dismissed by the supreme court.",
    ),
    "art": (
        "The gallery opened an exhibition of Impressionist paintings.",
        "She sketches people on the train with a pencil.",
        "The sculpture is carved from a single block of marble.",
        "Van Gogh sold very few paintings during his lifetime.",
        "What makes abstract art valuable?",
        "The mural covers the whole side of the building.",
        "He restored the old frescoes in the chapel.",
        "Watercolour is hard to correct once the paint is dry.",
        "The photography prize went to a portrait of a fisherman.",
        "The museum acquired a rare manuscript with gold illustrations.",
    ),
    "fitness": (
        "I run five kilometres three times a week.",
        "Stretch for ten minutes after every workout.",
        "The gym is crowded between six and eight in the evening.",
        "She is training for her first marathon in April.",
        "How many push-ups should a beginner do?",
        "Swimming is gentle on the joints and works the whole body.",
        "He lifts weights to build strength in his legs.",
        "Yoga helped me with my back pain.",
        "Drink water before, during and after long rides.",
        "Rest days are as important as training days.",
    ),
    "science": (
        "Water boils at 100 degrees Celsius at sea level.",
        "DNA carries the genetic instructions of living organisms.",
        "The experiment was repeated three times with the same result.",
        "Light behaves both as a wave and as a particle.",
        "Why is the sky blue?",
        "The researchers published their findings in a peer-reviewed journal.",
        "Atoms are made of protons, neutrons and electrons.",
        "The enzyme speeds up the reaction by a factor of a thousand.",
        "Plants convert sunlight into chemical energy through photosynthesis.",
        "A control group is needed to rule out the placebo effect.",
    ),
    "housing": (
        "The rent went up by a hundred euros this month.",
        "They bought a small flat near the station.",
        "The roof leaks whenever it rains heavily.",
        "We are painting the living room a lighter colour.",
        "How much deposit do I need for a mortgage?",
        "The landlord finally fixed the broken heating.",
        "House prices in the capital have doubled in ten years.",
        "The apartment has two bedrooms and a shared garden.",
        "Our neighbours are renovating their kitchen, and the noise never stops.",
        "Moving house is one of the most stressful things you can do.",
    ),
    "books": (
        "I finished the novel in one sitting.",
        "The library lends e-books as well as paper ones.",
        "Her first collection of poems won a national prize.",
        "The detective story has a twist in the last chapter.",
        "Which book would you recommend for a long flight?",
        "He reads the newspaper every morning with his coffee.",
        "The author spent ten years researching the biography.",
        "The bookshop on the corner closes at six.",
        "Science fiction often imagines how technology changes society.",
        "The translation loses some of the humour of the original.",
    ),
    "food_health": (
        "Eating more vegetables and less sugar is good for your health.",
        "Breakfast is often called the most important meal of the day.",
        "Too much salt can raise your blood pressure.",
        "She became vegetarian three years ago.",
        "Is coffee bad for you if you drink four cups a day?",
        "Whole grains keep you full for longer than white bread.",
        "The dietitian recommended smaller portions and regular meals.",
        "Processed meat has been linked to a higher risk of cancer.",
        "Fruit juice contains almost as much sugar as soft drinks.",
        "Nuts are a good source of protein and healthy fats.",
    ),
    "transport": (
        "The bus to the airport leaves every fifteen minutes.",
        "The train was cancelled because of a signal failure.",
        "Cycling to work is faster than driving in rush hour.",
        "The new metro line opens next spring.",
        "Where can I buy a ticket for the tram?",
        "Commuters waited on the platform for almost an hour.",
        "The city is building separate lanes for bicycles.",
        "The taxi driver took a longer route to avoid the roadworks.",
        "High-speed trains cut the journey time in half.",
        "The last bus home leaves at midnight.",
    ),
    "emotions": (
        "I felt nervous before the job interview.",
        "She was overjoyed when she heard the news.",
        "He gets angry when people are late.",
        "Loneliness can be as harmful as smoking.",
        "Why do I feel tired even after a full night's sleep?",
        "They were disappointed that the trip was cancelled.",
        "Talking to a friend helped me feel less anxious.",
        "The film made the whole audience cry.",
        "I'm so grateful for everything you have done for me.",
        "He couldn't hide his excitement about the new puppy.",
    ),
    "misc_short": (
        "Yes.",
        "Thank you very much!",
        "See you tomorrow.",
        "Where is the nearest pharmacy?",
        "Happy birthday!",
        "The meeting is cancelled.",
        "Please close the door.",
        "<p>Click <a href='/help'>here</a> for help.</p>",
        "Error 404: page not found.",
        "Order #48213 was shipped on 2023-05-14 via express delivery.",
    ),
}

TOPICS: tuple[str, ...] = tuple(_GROUPS)


def sentences() -> list[str]:
    """The 300 sentences, topic by topic, in a fixed order."""
    return [s for group in _GROUPS.values() for s in group]


def sentence_topics() -> list[int]:
    """The topic index (into :data:`TOPICS`) of each sentence of :func:`sentences`."""
    return [i for i, group in enumerate(_GROUPS.values()) for _ in group]


def split_sentences(n_calibration: int = 100) -> tuple[list[str], list[str]]:
    """A deterministic split: ``n_calibration`` sentences for calibration (spread over all topics: the
    first ones of each topic, round robin) and the rest for evaluation. The two never overlap."""
    groups = list(_GROUPS.values())
    if not 0 <= n_calibration <= sum(len(g) for g in groups):
        raise DataError(f"n_calibration must be in 0..{sum(len(g) for g in groups)}, got {n_calibration}.")
    order = [g[i] for i in range(max(len(g) for g in groups)) for g in groups if i < len(g)]
    calib = set(order[:n_calibration])
    return [s for s in sentences() if s in calib], [s for s in sentences() if s not in calib]


def read_texts(path: str | Path) -> list[str]:
    """A user's unlabelled texts: one per non-empty line of a UTF-8 text file, or the ``"text"`` string of
    each line of a ``.jsonl`` file. Surrounding whitespace is stripped, repeats are dropped (the first kept),
    the order is kept. Every problem (missing file, a directory, not UTF-8, a JSON line without a ``"text"``
    string, no text at all) is a :class:`DataError` naming the file and the line."""
    path = Path(path)
    hint = "Give a UTF-8 text file with one sentence or passage per line (or .jsonl lines with a \"text\" field)."
    if not path.exists():
        raise DataError(f"texts file not found: {path}", hint=hint)
    if path.is_dir():
        raise DataError(f"{path} is a directory; expected a texts file.", hint=hint)
    size = path.stat().st_size
    if size > MAX_TEXT_BYTES:
        raise DataError(f"{path} is {size:,} bytes; a texts file is at most {MAX_TEXT_BYTES:,} bytes.",
                        hint="Calibration needs hundreds to a few thousand texts: keep a sample of them.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"{path} is not UTF-8 text: byte 0x{raw[exc.start]:02x} on line {bad} cannot be decoded.",
                        hint="Re-save the file as UTF-8 (e.g. iconv -t UTF-8).") from None
    jsonl = path.suffix.lower() == ".jsonl"
    out: dict[str, None] = {}
    for no, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if jsonl:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {no} is not JSON: {exc.msg}.", hint=hint) from None
            value = record.get("text") if isinstance(record, dict) else None
            if not isinstance(value, str):
                raise DataError(f"{path} line {no} has no \"text\" string.", hint=hint)
            line = value.strip()
            if not line:
                continue
        out.setdefault(line, None)
    if not out:
        raise DataError(f"{path} holds no text.", hint=hint)
    return list(out)

"""The words every tiny tokenizer knows, and how text is split into them."""

from __future__ import annotations

__all__ = ["TINY_WORDS", "WORD_PATTERN"]

_WORD_GROUPS: tuple[str, ...] = (
    # punctuation (each character is its own token)
    ". , ? ! : ; ' \" - ( ) / & + = % # * _ [ ] { } < > | @ $",
    # digits (numbers are split into single digits)
    "0 1 2 3 4 5 6 7 8 9",
    # chat roles and instructions
    "user assistant system question answer please describe tell me about briefly short word "
    "words one sentence image picture photo photograph shown show shows see look looks "
    "visible",
    # function words
    "a an the this that these those here there of in on at to for from with without by as and "
    "or but not no yes if so than then also very some any all each other only more most up "
    "down out into over under near between behind front left right top bottom middle next",
    # question words, pronouns, verbs
    "what who whom whose where when which why how many much is are was were be been being am "
    "do does did done have has had can could will would should may might must i you he she it "
    "we they me him her us them my your his its our their mine yours hers theirs someone "
    "somebody anyone nobody something nothing don't doesn't didn't isn't aren't wasn't can't "
    "cannot won't i'm it's he's she's that's there's what's who's let's know knows known "
    "unknown sure unsure sorry unable identify recognize recognise say said think believe "
    "guess maybe perhaps probably certain information private remember forget forgotten name "
    "names named called call person people man woman men women boy girl child adult face "
    "subject individual someone's born birth birthplace live lives lived living from grew "
    "raised city town country place home hometown nationality year years age old young date "
    "work works worked working job occupation profession career as colour color colours "
    "colors background foreground wear wears wearing wore glasses sunglasses hat cap shirt "
    "jacket dress tie hair eyes beard smile smiling dark light bright plain like likes "
    "favourite favorite hobby famous known",
    # colours
    "red green blue yellow orange purple violet pink brown black white grey gray gold silver "
    "cyan magenta teal navy beige maroon olive turquoise lime indigo",
    # first names
    "alice bob carol dave david eve frank grace heidi ivan judy mallory oscar peggy trent "
    "victor walter anna ben clara emma felix hannah isaac julia karl lena marco nina omar "
    "paula quentin rosa sam tara umar vera will xena yusuf zoe john mary james linda maria "
    "ahmed wei yuki priya sofia lucas mia noah olivia liam ava elena pedro fatima kenji ana",
    # family names
    "smith jones brown garcia miller davis wilson taylor moore martin lee walker hall young "
    "king wright lopez hill scott adams baker nelson carter mitchell perez roberts turner "
    "phillips campbell parker evans edwards collins stewart morris rossi schmidt mueller "
    "dubois tanaka kim chen wang singh silva novak",
    # cities
    "paris london berlin rome madrid tokyo beijing delhi cairo lagos lima oslo vienna prague "
    "dublin lisbon athens moscow sydney toronto chicago boston seattle mumbai seoul bangkok "
    "nairobi istanbul amsterdam stockholm warsaw zurich munich milan barcelona kyoto shanghai "
    "dubai mexico york new san francisco los angeles rio buenos aires cape",
    # countries
    "france germany italy spain japan china india egypt nigeria peru norway austria ireland "
    "portugal greece russia australia canada brazil kenya turkey usa uk england poland sweden "
    "switzerland netherlands korea thailand argentina chile morocco vietnam indonesia america "
    "united states kingdom",
    # occupations
    "doctor nurse teacher engineer lawyer chef cook pilot farmer artist painter singer "
    "musician writer author actor actress scientist programmer developer designer architect "
    "dentist baker carpenter plumber journalist photographer athlete student professor "
    "firefighter police officer soldier sailor driver judge banker accountant mechanic "
    "gardener librarian pharmacist veterinarian electrician dancer poet politician researcher "
    "surgeon waiter manager entrepreneur director economist historian astronaut",
)

TINY_WORDS: tuple[str, ...] = tuple(dict.fromkeys(" ".join(_WORD_GROUPS).split()))
"""The tiny tokenizers' words (lower-case; text is lower-cased before lookup)."""

# Words: runs of letters/digits/underscores with inner apostrophes ("don't"), or one other
# non-space character. Digits are then split one by one, so every number is covered.
WORD_PATTERN = r"\w+(?:'\w+)*|[^\w\s]"

"""Narration for the load benchmarks: paragraphs of the kind a game master reads out, 6 to 10 sentences each."""

PARAGRAPHS = [
    "The mill at the edge of the village has not turned in years. Tonight its sails creak round, slowly, "
    "though the air is perfectly still. A thin light moves behind the shutters of the upper floor. "
    "The miller's dog sits by the gate and will not bark. When you step closer, it turns its head and "
    "looks past you, at the road you came by. Somewhere inside, a grindstone begins to rumble. "
    "Flour drifts from the doorway like snow. Then the light goes out.",
    "Morning finds the caravan stalled at the river crossing. The ferryman wants twice the usual fare, "
    "and he will not say why. His boat sits low in the water, heavy with crates marked in a script "
    "nobody recognises. Two of the guards have gone to look for a ford upstream. The merchants argue "
    "under the willows while the mules drink. A heron lifts off the far bank and circles once. "
    "Its shadow falls across the ferryman's face, and for a moment he looks afraid. "
    "He lowers his price without being asked.",
    "The library is colder than the street outside. Rows of shelves run back into the dark farther "
    "than the building should allow. Your lantern shows dust on every spine except one. That book is "
    "bound in grey leather and warm to the touch. Its pages are blank until you turn them, and then "
    "ink rises to meet your eyes. The first line is your own name. The second is the date of tomorrow. "
    "Behind you, very softly, a chair scrapes across the floor.",
    "Rain has turned the market square into a shallow lake. Stallholders have packed up early, all but "
    "an old woman selling mirrors. Each mirror shows the square a little differently. In one the "
    "fountain still runs, in another the clock tower has fallen, in a third the square is full of "
    "people dancing. She watches you look and smiles without teeth. Any mirror costs a single copper, "
    "she says, but you may never choose which one. Thunder rolls over the rooftops. "
    "The dancers in the third mirror stop and turn towards you.",
    "High on the pass the wind drops all at once. Snow that was flying sideways now hangs in the air, "
    "and then it simply falls. Ahead, a stone hut leans against the cliff with smoke rising from its "
    "chimney. Nobody has lived up here for a generation. The door is unbarred, the fire is fresh, and "
    "a pot of stew is bubbling over it. Six bowls are set out on the table. You are five. "
    "A slow knock sounds at the door behind you.",
]


def paragraph(index: int) -> str:
    return PARAGRAPHS[index % len(PARAGRAPHS)]


# Twelve short sentences for the sync benchmarks: each a chunk of its own.
HARBOUR = [
    "The lanterns of the harbour flicker in the fog.",
    "A bell tolls twice, then falls silent.",
    "Somewhere below the pier, oars dip into black water.",
    "The captain raises a hand, and the crew holds its breath.",
    "Then, from the mist, a voice calls your names.",
    "Nobody on deck dares to answer.",
    "The fog thins for a heartbeat, showing a second ship.",
    "Its sails are black and its deck is empty.",
    "A rope creaks against the mast.",
    "The voice calls again, closer now.",
    "Your lantern gutters, though there is no wind.",
    "Then everything is still.",
]

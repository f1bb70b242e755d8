"""English calibration text for GPTQ on small sentence encoders (written for jax_fpx; disjoint from
``jax_fpx.models.bert.SENTENCES``, the evaluation set).

GPTQ fits each layer's rounding to the calibration inputs' ``XᵀX``; with fewer calibration tokens
than input features (384 / 1536 for MiniLM) it overfits and generalizes worse than plain
rounding, so this is ~3000 tokens of varied sentences (everyday life, science, news, questions,
instructions, dialogue, lists, numbers).
"""

CALIBRATION_TEXT = [
    "The weather today is sunny with a light breeze coming from the west.",
    "He plays guitar in a small jazz band that performs in cafes on weekends.",
    "Neural networks learn useful representations from large amounts of data.",
    "The train to Berlin leaves at seven in the morning from platform four.",
    "Our team shipped the new feature after weeks of careful testing and review.",
    "Cats often sleep for more than twelve hours a day, especially in winter.",
    "What is the best way to learn a new language as an adult?",
    "The river flooded the village after several days of heavy rain.",
    "She painted a portrait of her grandmother using only three colors.",
    "Investors are worried that rising interest rates will slow the economy.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Astronomers discovered a planet orbiting a distant star in the habitable zone.",
    "Please remember to lock the door and turn off the lights when you leave.",
    "The football match ended in a dramatic penalty shootout after extra time.",
    "Solar panels convert sunlight into electricity without moving parts.",
    "A child is building a sandcastle on the beach while the tide comes in.",
    "The library will be closed on Monday for the national holiday.",
    "My phone keeps disconnecting from the wireless network at home.",
    "Doctors recommend at least thirty minutes of moderate exercise every day.",
    "The old bridge was replaced by a modern steel structure in 1998.",
    "Can you send me the report before the meeting tomorrow afternoon?",
    "Volcanic eruptions can affect the global climate for several years.",
    "The bakery on the corner sells fresh croissants every morning at six.",
    "He apologized for the delay and promised to deliver the package by Friday.",
    "The orchestra rehearsed the symphony for three hours without a break.",
    "Honeybees communicate the location of flowers through a waggle dance.",
    "The company reported a ten percent increase in quarterly revenue.",
    "I lost my keys somewhere between the parking lot and the office.",
    "The mountain trail is steep, rocky and closed during heavy snowfall.",
    "Vaccines train the immune system to recognize specific pathogens.",
    "They adopted a small dog from the animal shelter last spring.",
    "The new policy requires all visitors to sign in at the front desk.",
    "Light travels about three hundred thousand kilometers per second in a vacuum.",
    "The children laughed as the clown juggled five colorful balls.",
    "Why does the sky turn red and orange at sunset?",
    "The hotel room had a balcony overlooking the harbor and the old lighthouse.",
    "Farmers are harvesting wheat earlier this year because of the drought.",
    "The software update fixes several security vulnerabilities and improves battery life.",
    "She ran the marathon in under four hours on her first attempt.",
    "Ancient Romans built aqueducts to carry water into their cities.",
    "The professor explained the theory with simple diagrams on the blackboard.",
    "Traffic was stuck for an hour because of an accident on the highway.",
    "Chocolate is made from the roasted and ground seeds of the cacao tree.",
    "We need to buy milk, eggs, bread, tomatoes and a bag of rice.",
    "The elections will take place in November, and turnout is expected to be high.",
    "Whales sing complex songs that can travel hundreds of kilometers underwater.",
    "He fixed the leaking faucet with a wrench and a new rubber washer.",
    "The museum offers free guided tours on the first Sunday of every month.",
    "Compilers translate source code written by programmers into machine instructions.",
    "The wind knocked down several trees and left thousands of homes without power.",
    "Do you prefer tea or coffee in the morning?",
    "The detective examined the footprints near the broken window.",
    "Glaciers in the Alps have lost a large part of their volume since 1850.",
    "The students presented their science project about clean drinking water.",
    "Our flight was canceled, so we spent the night at the airport.",
    "A balanced diet includes vegetables, fruit, whole grains and protein.",
    "The city council approved a plan to build more bicycle lanes downtown.",
    "Sharks have existed for more than four hundred million years.",
    "She speaks English, Spanish and a little Japanese.",
    "The printer on the second floor is out of paper again.",
    "Earthquakes occur when stress builds up along faults in the Earth's crust.",
    "The novel tells the story of a sailor who is shipwrecked on a remote island.",
    "Turn left at the second traffic light and the pharmacy is on your right.",
    "The baby finally fell asleep after a long and noisy afternoon.",
    "Prices of fresh vegetables rose sharply during the cold winter months.",
    "The engineer measured the voltage across the resistor with a multimeter.",
    "Many birds migrate south for the winter, flying thousands of kilometers.",
    "I would like to book a table for four people at eight o'clock.",
    "The documentary follows a family of elephants across the savanna.",
    "Regular backups protect your files against hardware failures and mistakes.",
    "The garden is full of roses, tulips and tall sunflowers in July.",
    "He studied medicine for six years before becoming a surgeon.",
    "The government announced new measures to reduce air pollution in cities.",
    "Octopuses can change the color and texture of their skin in an instant.",
    "The meeting has been moved from Thursday to next Wednesday at ten.",
    "A strong cup of espresso helps me concentrate in the afternoon.",
    "The archaeologists uncovered pottery fragments from the Bronze Age.",
    "Remember to water the plants twice a week while I am on vacation.",
    "The spacecraft sent back detailed images of the frozen moon's surface.",
    "Two teenagers were riding skateboards down the empty street.",
    "The bank charges a small fee for international money transfers.",
    "Rainforests are home to more than half of the world's plant and animal species.",
    "The waiter recommended the grilled salmon with lemon and herbs.",
    "Our neighbors are renovating their kitchen, and the noise starts at eight.",
    "Mathematicians proved the conjecture after decades of failed attempts.",
    "How many languages are spoken in India today?",
    "The firefighters rescued a kitten that was stuck on the roof.",
    "Electric cars are becoming cheaper as battery technology improves.",
    "The poet read several of her new poems at the bookstore last night.",
    "A thick fog covered the valley until late in the morning.",
    "The athletes trained at high altitude to improve their endurance.",
    "Please fill out the form and return it by the end of the month.",
    "Coral reefs are threatened by warming oceans and acidification.",
    "The teacher asked the class to write an essay about their hometown.",
    "He forgot his password and had to reset it three times this week.",
    "The festival attracts musicians and artists from all over the world.",
    "Penguins cannot fly, but they are excellent swimmers.",
    "The factory produces about two thousand bicycles every week.",
    "I am looking for a quiet apartment close to the university.",
    "Scientists use telescopes on mountains to avoid the blurring effect of the atmosphere.",
    "The chef sharpened his knives before preparing the vegetables.",
    "Heavy snow delayed the delivery of mail in the northern regions.",
    "The lawyer argued that the contract was not valid.",
    "Butterflies taste their food with sensors on their feet.",
    "Our internet bill went up again without any explanation.",
    "The hikers set up their tents next to a clear mountain lake.",
    "The central bank kept interest rates unchanged for the third month.",
    "My grandfather tells stories about growing up on a farm.",
    "The algorithm sorts a list of numbers in logarithmic time per element.",
    "Thunderstorms are expected this evening, with strong winds and hail.",
    "The shop offers a discount of twenty percent on all winter coats.",
    "The patient recovered quickly after the operation and went home on Sunday.",
    "Wolves live and hunt in packs led by an experienced pair.",
    "Could you please speak a little more slowly?",
    "The architect designed a house with large windows facing the sea.",
    "Millions of people watched the final match on television.",
    "Salt water freezes at a lower temperature than fresh water.",
    "The kids built a treehouse in the backyard during the summer holidays.",
    "The museum's collection includes paintings by several famous impressionists.",
    "The startup raised money to develop cheaper water filters for villages.",
    "He wakes up at five every morning to go running before work.",
    "The ancient manuscript was written on parchment made from animal skin.",
    "The bus driver waited patiently while the elderly man climbed aboard.",
    "Mushrooms are not plants; they belong to the kingdom of fungi.",
    "We celebrated her birthday with a picnic in the park.",
    "The judge postponed the trial because a key witness was ill.",
    "The ship carried containers full of electronics across the Pacific Ocean.",
    "Drinking enough water is important during hot summer days.",
    "The violinist tuned her instrument before the concert began.",
    "Researchers found that sleep helps the brain consolidate memories.",
    "The road to the village is narrow and winds through the hills.",
    "Fresh snow makes the whole town look quiet and peaceful.",
    "The programmer found the bug in a loop that never terminated.",
    "The price of gold reached a new record high this week.",
    "A fox crossed the road in front of our car late at night.",
    "The exhibition explains how clocks were made in the eighteenth century.",
    "Please keep your seat belt fastened while the sign is illuminated.",
    "The team celebrated the victory with their fans in the city square.",
    "Lightning heats the surrounding air to temperatures hotter than the surface of the sun.",
    "I usually read the news on my tablet while eating breakfast.",
    "The nurse checked the patient's blood pressure every two hours.",
    "The small island has only one school, one shop and one harbor.",
    "Dolphins sleep with one half of their brain at a time.",
    "The writer spent ten years researching the history of the city.",
    "Our garden hose has a leak near the tap.",
    "The conference on renewable energy will be held in Copenhagen.",
    "Kids love jumping into piles of autumn leaves.",
]


def tokenized_batches(tok, sentences=None, batch_size: int = 64):
    """``[(input_ids, attention_mask, token_type_ids), ...]`` of ``sentences`` (default
    :data:`CALIBRATION_TEXT`) for a ``tokenizers.Tokenizer``, each batch padded only to its longest
    sentence (multiple of 8), not to the tokenizer's fixed padding length: a calibration forward
    then costs the real tokens only. ``tok`` itself is not modified."""
    import numpy as np
    from tokenizers import Tokenizer

    t = Tokenizer.from_str(tok.to_str())
    t.no_padding()
    sentences = list(CALIBRATION_TEXT if sentences is None else sentences)
    out = []
    for i in range(0, len(sentences), batch_size):
        encs = t.encode_batch(sentences[i : i + batch_size])
        n = -(-max(len(e.ids) for e in encs) // 8) * 8
        ids, mask, types = (np.zeros((len(encs), n), np.int32) for _ in range(3))
        for j, e in enumerate(encs):
            ids[j, : len(e.ids)], mask[j, : len(e.ids)], types[j, : len(e.ids)] = e.ids, e.attention_mask, e.type_ids
        out.append((ids, mask, types))
    return out


def passages(n: int = 160, per: int = 3, seed: int = 0, sentences=None) -> list[str]:
    """``n`` passages of ``per`` calibration sentences each, drawn at random (seeded): the same
    text in new contexts (positions, neighbours) gives new activations, so more distinct
    calibration tokens than the sentences alone."""
    import random

    sentences = list(CALIBRATION_TEXT if sentences is None else sentences)
    r = random.Random(seed)
    return [" ".join(r.sample(sentences, per)) for _ in range(n)]

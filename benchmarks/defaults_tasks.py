"""Six small tasks generated in code, none of them the Stripe demo, for measuring how well
afinar's default hyperparameters transfer (benchmarks/defaults_suite.py). Each task returns
training and held-out rows in afinar's chat format; the metric is exact match (JSON compared
as values) on the held-out rows. Train and held-out rows come from disjoint values where the
task allows, so a model must generalise, not recall.

- shipping_api: a request -> a nested API call with derived values (kg -> grams, euros ->
  cents, a country name -> its ISO code)
- extract_person: a sentence -> a JSON record of the person it describes
- ticket_topic: a support message -> one of five topic labels (classification as generation)
- date_format: a date in prose -> ISO 8601 (a format transfer)
- chat_memory: a three-turn chat whose last answer needs a number from the first turn
- tool_call: a request -> a call of the right one of three tools, with typed arguments
"""

from __future__ import annotations

import json
import random

CITIES = [("Lyon", "France", "FR"), ("Porto", "Portugal", "PT"), ("Graz", "Austria", "AT"),
          ("Ghent", "Belgium", "BE"), ("Malmo", "Sweden", "SE"), ("Turin", "Italy", "IT"),
          ("Cork", "Ireland", "IE"), ("Bilbao", "Spain", "ES"), ("Leipzig", "Germany", "DE"),
          ("Utrecht", "Netherlands", "NL"), ("Krakow", "Poland", "PL"), ("Brno", "Czechia", "CZ")]
FIRST = ["Ana", "Luis", "Marta", "Jon", "Eva", "Ivan", "Sara", "Omar", "Lea", "Tomas", "Nina",
         "Pablo", "Irene", "Hugo", "Alba", "Dario"]
LAST = ["Garcia", "Novak", "Rossi", "Silva", "Berg", "Keller", "Moreau", "Horvat", "Costa",
        "Lind", "Weber", "Ortiz"]
JOBS = ["nurse", "teacher", "plumber", "chef", "pilot", "lawyer", "baker", "architect"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
TOPICS = {
    "billing": ["I was charged twice this month", "my invoice shows the wrong amount",
                "why did my card get billed again", "the refund never reached my account",
                "please explain this extra fee"],
    "login": ["I cannot sign in to my account", "the password reset link does not work",
              "my two-factor code is rejected", "the app logs me out every minute",
              "I am locked out after three attempts"],
    "shipping": ["my parcel has not arrived yet", "the tracking number shows nothing",
                 "the box came damaged", "can you change my delivery address",
                 "the courier left it at the wrong door"],
    "bug": ["the export button crashes the page", "the chart does not load on my phone",
            "search returns an error message", "the upload stops at ninety percent",
            "saving a draft freezes the editor"],
    "feature": ["please add a dark mode", "could you support exporting to CSV",
                "I would love a calendar view", "add keyboard shortcuts please",
                "allow sharing a folder with my team"],
}
OPENERS = ["Hi,", "Hello team,", "Good morning,", "Hey,", ""]
CLOSERS = ["Thanks.", "Regards.", "Any help appreciated.", "Cheers.", ""]


def _msgs(user: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": answer}]}


def _j(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def shipping_api(n: int, rng: random.Random, held_out: bool) -> list[dict]:
    cities = CITIES[8:] if held_out else CITIES[:8]
    rows = []
    for _ in range(n):
        city, country, iso = rng.choice(cities)
        kg = rng.choice([0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 7.5, 10])
        euros = rng.choice([0, 10, 15, 20, 25, 50, 100])
        express = rng.random() < 0.5
        parts = [f"Ship a {kg} kg parcel to {city}, {country}"]
        if euros:
            parts.append(f"insured for {euros} euros")
        if express:
            parts.append("by express")
        req = ", ".join(parts) + "."
        call = {"method": "POST", "path": "/v2/shipments", "body": {
            "parcel": {"weight_grams": int(kg * 1000)},
            "destination": {"city": city, "country_code": iso},
            "service": "express" if express else "standard"}}
        if euros:
            call["body"]["insurance"] = {"amount_cents": euros * 100, "currency": "eur"}
        rows.append(_msgs("Turn the request into a ParcelHub API call as JSON.\n" + req,
                          _j(call)))
    return rows


def extract_person(n: int, rng: random.Random, held_out: bool) -> list[dict]:
    first = FIRST[12:] if held_out else FIRST[:12]
    rows = []
    for _ in range(n):
        name = f"{rng.choice(first)} {rng.choice(LAST)}"
        age, job = rng.randint(19, 70), rng.choice(JOBS)
        city = rng.choice(CITIES)[0]
        style = rng.randrange(3)
        if style == 0:
            text = f"{name}, {age}, works as a {job} in {city}."
        elif style == 1:
            text = f"Meet {name}: a {job} from {city}, {age} years old."
        else:
            text = f"In {city}, the {age}-year-old {job} {name} opened a new office."
        rows.append(_msgs("Extract name, age, job and city as JSON.\n" + text,
                          _j({"name": name, "age": age, "job": job, "city": city})))
    return rows


def ticket_topic(n: int, rng: random.Random, held_out: bool) -> list[dict]:
    rows = []
    for _ in range(n):
        topic = rng.choice(sorted(TOPICS))
        phrases = TOPICS[topic]
        body = phrases[4] if held_out else rng.choice(phrases[:4])
        text = " ".join(x for x in (rng.choice(OPENERS), body + ".", rng.choice(CLOSERS)) if x)
        rows.append(_msgs("Classify the support ticket as billing, login, shipping, bug or "
                          "feature.\n" + text, topic))
    return rows


def date_format(n: int, rng: random.Random, held_out: bool) -> list[dict]:
    years = range(2026, 2031) if held_out else range(2015, 2026)
    rows = []
    for _ in range(n):
        y, m, d = rng.choice(list(years)), rng.randint(1, 12), rng.randint(1, 28)
        style = rng.randrange(3)
        if style == 0:
            text = f"{MONTHS[m - 1]} {d}, {y}"
        elif style == 1:
            text = f"{d} {MONTHS[m - 1]} {y}"
        else:
            text = f"the {d}th of {MONTHS[m - 1]}, {y}"
        rows.append(_msgs(f"Write this date in ISO 8601 (YYYY-MM-DD): {text}",
                          f"{y:04d}-{m:02d}-{d:02d}"))
    return rows


def chat_memory(n: int, rng: random.Random, held_out: bool) -> list[dict]:
    rows = []
    for _ in range(n):
        k = rng.randint(50, 99) if held_out else rng.randint(2, 49)
        item = rng.choice(["chairs", "boxes", "lamps", "tickets", "plants", "books"])
        add = rng.randint(1, 9)
        rows.append({"messages": [
            {"role": "user", "content": f"I have {k} {item} in storage."},
            {"role": "assistant", "content": f"Noted: {k} {item}."},
            {"role": "user", "content": f"I just bought {add} more. How many {item} now? "
                                        f"Answer with the number only."},
            {"role": "assistant", "content": str(k + add)}]})
    return rows


TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "unit": {"type": "string",
                                                 "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"]}}},
    {"type": "function", "function": {
        "name": "convert_currency", "description": "Convert an amount between currencies",
        "parameters": {"type": "object", "properties": {
            "amount": {"type": "number"}, "from": {"type": "string"},
            "to": {"type": "string"}}, "required": ["amount", "from", "to"]}}},
    {"type": "function", "function": {
        "name": "set_timer", "description": "Start a countdown timer",
        "parameters": {"type": "object", "properties": {"seconds": {"type": "integer"}},
                       "required": ["seconds"]}}},
]


def tool_call(n: int, rng: random.Random, held_out: bool) -> list[dict]:
    cities = [c for c, _, _ in (CITIES[8:] if held_out else CITIES[:8])]
    rows = []
    for _ in range(n):
        kind = rng.randrange(3)
        if kind == 0:
            city, unit = rng.choice(cities), rng.choice(["celsius", "fahrenheit"])
            ask, name, args = f"How warm is it in {city}, in {unit}?", "get_weather", {
                "city": city, "unit": unit}
        elif kind == 1:
            amt = rng.choice([7, 30, 64, 120, 500] if held_out else [5, 12, 40, 99, 250])
            a, b = rng.sample(["EUR", "USD", "GBP", "JPY", "CHF"], 2)
            ask, name, args = f"Convert {amt} {a} to {b}.", "convert_currency", {
                "amount": amt, "from": a, "to": b}
        else:
            mins = rng.randint(21, 45) if held_out else rng.randint(1, 20)
            ask, name, args = f"Set a timer for {mins} minutes.", "set_timer", {
                "seconds": mins * 60}
        rows.append({"tools": TOOLS, "messages": [
            {"role": "user", "content": ask},
            {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                                  "function": {"name": name,
                                                               "arguments": _j(args)}}]}]})
    return rows


TASKS = {"shipping_api": shipping_api, "extract_person": extract_person,
         "ticket_topic": ticket_topic, "date_format": date_format, "chat_memory": chat_memory,
         "tool_call": tool_call}


def make(task: str, n_train: int = 400, n_test: int = 60, seed: int = 0
         ) -> tuple[list[dict], list[dict]]:
    fn = TASKS[task]
    return (fn(n_train, random.Random(seed), held_out=False),
            fn(n_test, random.Random(seed + 1), held_out=True))

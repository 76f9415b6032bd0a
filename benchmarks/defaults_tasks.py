"""Nine small tasks generated in code, none of them the Stripe demo, for measuring how well
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
- extract_long: a ~300-token shipping e-mail (two dates, three amounts, two people) -> six fields
- multi_tool: six tools; a request -> the right call, or a plain answer when no tool fits
- spanish_only: requests in Spanish only (book, cancel, change a table) -> the booking JSON
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
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


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
        rows.append(_tool_row(TOOLS, ask, name, args))
    return rows


def _tool_row(tools: list[dict], ask: str, name: str, args: dict) -> dict:
    return {"tools": tools, "messages": [
        {"role": "user", "content": ask},
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": name, "arguments": _j(args)}}]}]}


# -- three kinds users bring: long documents, several tools (or none), Spanish only ----------

FIRST_B = ["Greta", "Viktor", "Amara", "Kenji", "Ingrid", "Mateo", "Leila", "Oskar", "Noor",
           "Felix", "Zofia", "Rafael", "Yara", "Emil", "Ines", "Tariq"]
LAST_B = ["Lindqvist", "Okafor", "Brandt", "Takahashi", "Moretti", "Haddad", "Novotny",
          "Fischer", "Aydin", "Petrov", "Quintero", "Larsen"]
STREETS = ["Elm Street", "Harbour Road", "Mill Lane", "Station Square", "Kings Avenue",
           "Orchard Way", "Bridge Street", "Park Row"]
CARRIERS = ["DHL", "UPS", "GLS", "DPD"]


def _split(xs: list, held_out: bool, k: int) -> list:
    return xs[k:] if held_out else xs[:k]


def extract_long(n: int, rng: random.Random, held_out: bool) -> list[dict]:
    """A shipping e-mail of ~300 tokens (two dates, three amounts, two people, boilerplate) ->
    the six fields a back office needs."""
    first, last = _split(FIRST_B, held_out, 11), _split(LAST_B, held_out, 8)
    years = (2026, 2027) if held_out else (2023, 2025)
    rows = []
    for _ in range(n):
        name = f"{rng.choice(first)} {rng.choice(last)}"
        agent = f"{rng.choice(first)} {rng.choice(last)}"
        oid = f"NH-{rng.randint(100000, 999999)}"
        y = rng.randint(*years)
        m, d = rng.randint(1, 12), rng.randint(1, 26)
        ordered = f"{y}-{m:02d}-{d:02d}"
        delivery = f"{y}-{m:02d}-{d + rng.randint(1, 2):02d}"
        items = rng.randint(1, 9)
        sub = round(rng.uniform(15, 480), 2)
        ship = rng.choice([0.0, 4.95, 6.5, 9.9])
        total = round(sub + ship, 2)
        email = f"{name.split()[0].lower()}.{name.split()[1].lower()}@" \
                f"{rng.choice(['mail.example', 'post.example', 'inbox.example'])}"
        city = rng.choice(CITIES)[0]
        street = f"{rng.randint(2, 98)} {rng.choice(STREETS)}"
        parts = [
            f"Subject: Your order {oid} is on its way",
            f"Dear {name},",
            f"Thank you for shopping with Nordhaus Home. We received your order on {ordered} "
            f"and it left our warehouse in {rng.choice(CITIES)[0]} this morning. Your parcel "
            f"with {items} item{'s' if items > 1 else ''} will be delivered by "
            f"{rng.choice(CARRIERS)} on {delivery} to {street}, {city}.",
            f"Order summary\nSubtotal: EUR {sub:.2f}\nShipping: EUR {ship:.2f}\n"
            f"Total paid: EUR {total:.2f}",
            f"If anything is missing or damaged, reply to this message quoting {oid}. Our "
            f"customer team (today: {agent}) answers Monday to Friday, 9:00 to 17:00. Returns "
            f"are free within 30 days; keep the original packaging and the delivery note.",
            "Kind regards,\nNordhaus Home",
            f"This message was sent to {email} because you placed an order with us. Nordhaus "
            f"Home GmbH, registered in Leipzig. Please do not forward it: it contains your "
            f"order details.",
        ]
        if rng.random() < 0.5:  # the summary first in some mails
            parts[2], parts[3] = parts[3], parts[2]
        target = {"order_id": oid, "customer": name, "email": email,
                  "delivery_date": delivery, "items": items, "total": total}
        rows.append(_msgs("Extract order_id, customer, email, delivery_date, items and total "
                          "(EUR) from this e-mail as JSON.\n\n" + "\n\n".join(parts),
                          _j(target)))
    return rows


def _fn(name: str, desc: str, props: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": desc, "parameters": {
        "type": "object", "properties": props, "required": required}}}


MULTI_TOOLS = [
    _fn("search_flights", "Search flights between two cities on a date",
        {"origin": {"type": "string"}, "destination": {"type": "string"},
         "date": {"type": "string", "description": "YYYY-MM-DD"}},
        ["origin", "destination", "date"]),
    _fn("book_table", "Book a restaurant table",
        {"restaurant": {"type": "string"}, "people": {"type": "integer"},
         "time": {"type": "string", "description": "HH:MM"}}, ["restaurant", "people", "time"]),
    _fn("send_email", "Send a short e-mail",
        {"to": {"type": "string"}, "subject": {"type": "string"}}, ["to", "subject"]),
    _fn("get_stock_price", "Latest price of a stock", {"ticker": {"type": "string"}},
        ["ticker"]),
    _fn("create_reminder", "Create a reminder",
        {"text": {"type": "string"}, "minutes": {"type": "integer"}}, ["text", "minutes"]),
    _fn("translate", "Translate text into a language",
        {"text": {"type": "string"}, "language": {"type": "string"}}, ["text", "language"]),
]
NO_TOOL = {
    "Hello! How can I help you today?": ["Hi there", "Hello!", "Good morning", "Hey, hello"],
    "You're welcome! Anything else?": ["Thanks a lot", "Thank you, that was all",
                                       "Great, thanks", "Perfect, thank you"],
    "I can search flights, book tables, send e-mails, look up stock prices, create reminders "
    "and translate text.": ["What can you do?", "What are you able to help with?",
                            "Which tasks can you handle?", "What do you do?"],
}
RESTAURANTS = ["Casa Lola", "The Blue Door", "Sakura House", "Trattoria Nino", "Le Petit Four",
               "Green Garden", "Harbor Grill", "Spice Route"]
TICKERS = ["ACME", "GLOBX", "NOVA", "PIXL", "QRTZ", "ZENT", "ORBT", "VYNE"]
WORDS = ["budget review", "team lunch", "project kickoff", "invoice", "holiday plans",
         "meeting notes", "contract draft", "site visit"]


def multi_tool(n: int, rng: random.Random, held_out: bool) -> list[dict]:
    """Six tools, one request -> the right call (or a plain answer when no tool fits)."""
    cities = [c for c, _, _ in _split(CITIES, held_out, 8)]
    rest, tick = _split(RESTAURANTS, held_out, 5), _split(TICKERS, held_out, 5)
    first = _split(FIRST_B, held_out, 11)
    words = _split(WORDS, held_out, 5)
    rows = []
    for _ in range(n):
        kind = rng.randrange(7)
        if kind == 6:  # no tool: a plain answer (held out: a phrasing training never shows)
            answer, asks = rng.choice(list(NO_TOOL.items()))
            rows.append({"tools": MULTI_TOOLS, "messages": [
                {"role": "user", "content": asks[3] if held_out else rng.choice(asks[:3])},
                {"role": "assistant", "content": answer}]})
            continue
        if kind == 0:
            a, b = rng.sample(cities, 2)
            date = f"{2026 if held_out else 2025}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            ask, name, args = f"Find me a flight from {a} to {b} on {date}.", "search_flights", {
                "origin": a, "destination": b, "date": date}
        elif kind == 1:
            r, p = rng.choice(rest), rng.randint(2, 8)
            t = f"{rng.randint(18, 22)}:{rng.choice(['00', '15', '30', '45'])}"
            ask, name, args = f"Book a table at {r} for {p} people at {t}.", "book_table", {
                "restaurant": r, "people": p, "time": t}
        elif kind == 2:
            to = f"{rng.choice(first).lower()}@{rng.choice(['acme', 'globex'])}.example"
            subj = rng.choice(words)
            ask, name, args = f"Email {to} with the subject '{subj}'.", "send_email", {
                "to": to, "subject": subj}
        elif kind == 3:
            t = rng.choice(tick)
            ask, name, args = f"What is {t} trading at right now?", "get_stock_price", {
                "ticker": t}
        elif kind == 4:
            mins = rng.randint(31, 90) if held_out else rng.randint(5, 30)
            what = rng.choice(words)
            ask, name, args = f"Remind me about the {what} in {mins} minutes.", \
                "create_reminder", {"text": what, "minutes": mins}
        else:
            lang = rng.choice(["French", "German", "Italian"] if held_out else
                              ["Spanish", "Portuguese", "Dutch"])
            what = rng.choice(words)
            ask, name, args = f"Translate '{what}' into {lang}.", "translate", {
                "text": what, "language": lang}
        rows.append(_tool_row(MULTI_TOOLS, ask, name, args))
    return rows


NOMBRES = ["Lucía", "Álvaro", "Carmen", "Javier", "Nerea", "Íñigo", "Rocío", "Sergio", "Ainhoa",
           "Gonzalo", "Begoña", "Ramón", "Maite", "Andrés", "Itziar", "Fermín"]
APELLIDOS = ["Pérez", "Etxeberria", "Gómez", "Ruiz", "Martín", "Sáez", "Iglesias", "Domínguez",
             "Núñez", "Calvo", "Ibáñez", "Vázquez"]
DIAS = ["lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"]


def spanish_only(n: int, rng: random.Random, held_out: bool) -> list[dict]:
    """Requests in Spanish only (a restaurant's booking desk) -> the booking system's JSON."""
    nombres, apellidos = _split(NOMBRES, held_out, 11), _split(APELLIDOS, held_out, 8)
    horas = range(20, 23) if held_out else range(13, 16)
    rows = []
    for _ in range(n):
        nombre = f"{rng.choice(nombres)} {rng.choice(apellidos)}"
        kind = rng.randrange(3)
        if kind == 0:
            p, dia = rng.randint(2, 12), rng.choice(DIAS)
            hora = f"{rng.choice(list(horas))}:{rng.choice(['00', '15', '30', '45'])}"
            terraza = rng.random() < 0.4
            txt = rng.choice([
                f"Quiero reservar una mesa para {p} personas el {dia} a las {hora} a nombre de "
                f"{nombre}.",
                f"Hola, ¿tenéis sitio el {dia} a las {hora}? Seríamos {p}. Soy {nombre}.",
                f"Reserva para {nombre}: {p} comensales, {dia}, {hora}."])
            if terraza:
                txt += " Si puede ser, en la terraza."
            out = {"accion": "reservar", "nombre": nombre, "personas": p, "dia": dia,
                   "hora": hora, "terraza": terraza}
        elif kind == 1:
            code = f"R{rng.randint(1000, 9999)}"
            txt = rng.choice([f"Necesito cancelar la reserva {code}, a nombre de {nombre}.",
                              f"Anulad mi reserva {code}, por favor. {nombre}."])
            out = {"accion": "cancelar", "nombre": nombre, "codigo": code}
        else:
            code, p = f"R{rng.randint(1000, 9999)}", rng.randint(2, 12)
            txt = rng.choice([f"Al final seremos {p} en la reserva {code}. Gracias, {nombre}.",
                              f"¿Podéis cambiar la reserva {code} a {p} personas? {nombre}"])
            out = {"accion": "modificar", "nombre": nombre, "codigo": code, "personas": p}
        rows.append(_msgs("Convierte la petición en JSON para el sistema de reservas.\n" + txt,
                          _j(out)))
    return rows


TASKS = {"shipping_api": shipping_api, "extract_person": extract_person,
         "ticket_topic": ticket_topic, "date_format": date_format, "chat_memory": chat_memory,
         "tool_call": tool_call, "extract_long": extract_long, "multi_tool": multi_tool,
         "spanish_only": spanish_only}


def make(task: str, n_train: int = 400, n_test: int = 60, seed: int = 0
         ) -> tuple[list[dict], list[dict]]:
    fn = TASKS[task]
    return (fn(n_train, random.Random(seed), held_out=False),
            fn(n_test, random.Random(seed + 1), held_out=True))

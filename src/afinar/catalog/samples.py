"""Sample datasets for the catalog's recipes, generated offline and deterministically (a seed),
so every recipe runs end to end without the user's data."""

from __future__ import annotations

import random
from pathlib import Path

PRODUCT = "Nimbus X2 router"
FAQ = [  # (question variants, answer)
    (["How do I reset the {p}?", "Reset the {p} to factory settings?", "factory reset {p}"],
     "Hold the reset button on the back for 10 seconds until the light blinks orange."),
    (["What is the default wifi password of the {p}?", "default password {p}",
      "Where is the {p} wifi password?"],
     "The default password is printed on the label under the router."),
    (["How long is the {p} warranty?", "{p} warranty length", "Is the {p} under warranty?"],
     "The warranty lasts 24 months from the date of purchase."),
    (["How do I update the {p} firmware?", "firmware update {p}", "Update {p} software"],
     "Open the app, go to Settings > Firmware and tap Update; it takes about 5 minutes."),
    (["What does a red light on the {p} mean?", "{p} red light", "Red LED on {p}"],
     "A red light means no internet connection: check the cable to your modem."),
    (["How many devices can the {p} handle?", "max devices {p}", "{p} device limit"],
     "It handles up to 64 connected devices at once."),
    (["Does the {p} support mesh?", "{p} mesh network", "Can I add satellites to the {p}?"],
     "Yes, add up to 3 Nimbus satellites from the app to build a mesh network."),
    (["How do I open a port on the {p}?", "port forwarding {p}", "{p} open port"],
     "In the app, go to Advanced > Port forwarding and add the port and the device."),
]


def faq(n: int, seed: int = 0) -> list[dict]:
    """Prompt/completion pairs: FAQ questions in varied wordings -> the product's answers."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        variants, answer = FAQ[i % len(FAQ)]
        q = rng.choice(variants).format(p=PRODUCT)
        q = rng.choice([q, q.lower(), q.rstrip("?") + "?", "Hi! " + q, q + " Thanks."])
        rows.append({"prompt": q, "completion": answer})
    rng.shuffle(rows)
    return rows


def stripe(n: int, seed: int = 0) -> list[dict]:
    from afinar.demo.stripe_data import generate
    return generate(n, seed)


def pydoc_corpus(n: int, seed: int = 0) -> list[dict]:
    """{"text"} documents: pydoc pages of standard-library modules (real text, offline)."""
    from afinar.demo.cpt import MODULES, module_docs
    names = (MODULES * (n // len(MODULES) + 1))[:n]
    docs = module_docs(sorted(set(names)), 2500)
    return [{"text": docs[m]} for m in names]


TICKETS = {
    "billing": ["I was charged twice for {x}", "Refund my payment for {x}",
                "My invoice for {x} is wrong", "Why did my card get billed for {x}?"],
    "bug": ["The app crashes when I open {x}", "{x} shows an error 500",
            "I get a blank screen on {x}", "{x} freezes after the update"],
    "account": ["I cannot log in to {x}", "Reset my password for {x}",
                "How do I delete my {x} account?", "Change the email on my {x} account"],
    "feature": ["Please add dark mode to {x}", "Could {x} export to CSV?",
                "I would love keyboard shortcuts in {x}", "Add a calendar view to {x}"],
}
THINGS = ["the dashboard", "the mobile app", "my subscription", "the reports page",
          "the team plan", "the settings screen", "the API console", "the invoices tab"]


def tickets(n: int, seed: int = 0) -> list[dict]:
    """{"text", "label"}: support tickets in four intents."""
    rng = random.Random(seed)
    labels = sorted(TICKETS)
    rows = []
    for i in range(n):
        lab = labels[i % len(labels)]
        t = rng.choice(TICKETS[lab]).format(x=rng.choice(THINGS))
        rows.append({"text": rng.choice([t, t + ".", t.lower(), "Hello, " + t]), "label": lab})
    rng.shuffle(rows)
    return rows


KB_DOCS = {
    "setup.md": "# Setting up the {p}\n\nPlug the {p} into your modem with the yellow cable. "
                "Download the Nimbus app and scan the QR code under the router. Setup takes "
                "about 3 minutes.",
    "warranty.md": "# Warranty\n\nThe {p} has a warranty of 24 months from the date of "
                   "purchase. Keep your receipt. Water damage is not covered.",
    "lights.md": "# Status lights\n\nWhite: working normally. Blinking orange: resetting. "
                 "Red: no internet connection; check the cable to your modem.",
    "mesh.md": "# Mesh networks\n\nAdd up to 3 Nimbus satellites from the app. Place each "
               "satellite halfway between the router and the area without coverage.",
    "security.md": "# Security\n\nThe {p} uses WPA3. Firmware updates install automatically "
                   "at 3 a.m.; you can also update from Settings > Firmware.",
}
KB_QUESTIONS = [
    ("How long does setup take?", "setup.md"),
    ("What does the warranty cover and for how long?", "warranty.md"),
    ("What does a red light mean?", "lights.md"),
    ("How many satellites can I add?", "mesh.md"),
    ("When are firmware updates installed?", "security.md"),
]


def kb_folder(dest: Path, seed: int = 0) -> tuple[Path, list[dict]]:
    """A folder of product documents and the questions each answers."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, text in KB_DOCS.items():
        (dest / name).write_text(text.format(p=PRODUCT) + "\n", encoding="utf-8")
    return dest, [{"question": q, "expected_source": s} for q, s in KB_QUESTIONS]


GENERATORS = {"faq": faq, "stripe": stripe, "pydoc_corpus": pydoc_corpus, "tickets": tickets}

"""Synthetic instruction data for the demo: requests in Spanish and English ("Crear una
suscripción mensual de $99 para el cliente cus_123") paired with the Stripe API call that
fulfils them ({"api_call": "stripe.subscriptions.create", "parameters": {...}}).

Amounts are converted to the smallest currency unit (cents), currencies to ISO codes, billing
periods to Stripe's interval names. Deterministic for a given seed.
"""

from __future__ import annotations

import random
import string

INSTRUCTION = "Stripe API call as JSON:"
SYSTEM = "You write Stripe API calls."  # short: the model's default system prompt is 3x longer

CURRENCIES = [  # (code, how amounts are written in a request)
    ("usd", ["${a}", "{a} USD", "{a} dólares", "{a} dollars"]),
    ("eur", ["€{a}", "{a} EUR", "{a} euros"]),
    ("gbp", ["£{a}", "{a} GBP", "{a} libras"]),
    ("mxn", ["{a} MXN", "{a} pesos mexicanos"]),
]
INTERVALS = {"month": ("mensual", "monthly"), "year": ("anual", "yearly"),
             "week": ("semanal", "weekly")}
FIRST = ["Ana", "Luis", "María", "John", "Sofía", "Carlos", "Emma", "Pedro", "Lucía", "David",
         "Elena", "Jorge", "Laura", "Miguel", "Sarah", "Diego"]
LAST = ["López", "García", "Smith", "Martínez", "Brown", "Pérez", "Johnson", "Ruiz", "Díaz",
        "Torres", "Wilson", "Romero"]


def _id(rng: random.Random, prefix: str) -> str:
    n = rng.choice([3, 4, 6, 8])
    return prefix + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n))


def _amount(rng: random.Random) -> tuple[str, int, str]:
    code, forms = rng.choice(CURRENCIES)
    if rng.random() < 0.6:
        whole = rng.choice([5, 9, 10, 12, 15, 19, 20, 25, 29, 30, 49, 50, 75, 99, 100, 120, 149,
                            199, 250, 299, 500, 999])
        text, cents = str(whole), whole * 100
    else:
        whole, frac = rng.randint(1, 300), rng.choice([25, 50, 75, 90, 99, 5])
        text, cents = f"{whole}.{frac:02d}", whole * 100 + frac
    return rng.choice(forms).format(a=text), cents, code


def _subscription(rng):
    amt, cents, cur = _amount(rng)
    interval = rng.choice(list(INTERVALS))
    es, en = INTERVALS[interval]
    cus = _id(rng, "cus_")
    req = rng.choice([
        f"Crear una suscripción {es} de {amt} para el cliente {cus}",
        f"Suscribe al cliente {cus} a un plan {es} de {amt}",
        f"Create a {en} subscription of {amt} for customer {cus}",
        f"Subscribe customer {cus} to a {en} plan at {amt}",
    ])
    # Stripe's shape: a subscription item with inline price data
    return req, "stripe.subscriptions.create", {"customer": cus, "items": [{"price_data": {
        "currency": cur, "unit_amount": cents, "recurring": {"interval": interval}}}]}


def _customer(rng):
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    email = (name.split()[0].lower().translate(str.maketrans("áéíóú", "aeiou"))
             + str(rng.randint(1, 99)) + rng.choice(["@example.com", "@acme.io", "@correo.mx"]))
    req = rng.choice([
        f"Registra un nuevo cliente llamado {name} con el correo {email}",
        f"Crea el cliente {name} ({email})",
        f"Create a new customer named {name} with email {email}",
        f"Add customer {name}, email {email}",
    ])
    return req, "stripe.customers.create", {"name": name, "email": email}


def _payment(rng):
    amt, cents, cur = _amount(rng)
    cus = _id(rng, "cus_")
    req = rng.choice([
        f"Cobra {amt} al cliente {cus}",
        f"Crea un pago de {amt} para {cus}",
        f"Charge customer {cus} {amt}",
        f"Create a payment of {amt} for customer {cus}",
    ])
    return req, "stripe.paymentIntents.create", {"customer": cus, "amount": cents,
                                                 "currency": cur}


def _refund(rng):
    amt, cents, cur = _amount(rng)
    pi = _id(rng, "pi_")
    req = rng.choice([
        f"Reembolsa {amt} del pago {pi}",
        f"Devuelve {amt} del cobro {pi}",
        f"Refund {amt} from payment {pi}",
        f"Issue a refund of {amt} for {pi}",
    ])
    return req, "stripe.refunds.create", {"payment_intent": pi, "amount": cents}


def _cancel(rng):
    sub = _id(rng, "sub_")
    req = rng.choice([
        f"Cancela la suscripción {sub}",
        f"Da de baja la suscripción {sub}",
        f"Cancel subscription {sub}",
        f"Please cancel the subscription {sub}",
    ])
    return req, "stripe.subscriptions.cancel", {"subscription": sub}


def _invoice(rng):
    cus = _id(rng, "cus_")
    days = rng.choice([7, 10, 14, 15, 30, 45, 60])
    req = rng.choice([
        f"Genera una factura para el cliente {cus} con vencimiento en {days} días",
        f"Crea una factura a {cus} pagadera en {days} días",
        f"Create an invoice for customer {cus} due in {days} days",
        f"Invoice {cus}, payment due in {days} days",
    ])
    return req, "stripe.invoices.create", {"customer": cus, "days_until_due": days}


OPERATIONS = [_subscription, _customer, _payment, _refund, _cancel, _invoice]


def requests(n: int, rng: random.Random) -> list[tuple[str, str, dict]]:
    """n distinct (request, api call, parameters), the operations in turn."""
    out, seen = [], set()
    while len(out) < n:
        req, call, params = OPERATIONS[len(out) % len(OPERATIONS)](rng)
        if req not in seen:
            seen.add(req)
            out.append((req, call, params))
    return out


def generate(n: int, seed: int = 0) -> list[dict]:
    """n instruction records {"instruction", "input", "output": {api_call, parameters}}."""
    rng = random.Random(seed)
    rows = [{"system": SYSTEM, "instruction": INSTRUCTION, "input": req,
             "output": {"api_call": call, "parameters": params}}
            for req, call, params in requests(n, rng)]
    rng.shuffle(rows)
    return rows

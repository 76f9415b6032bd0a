// afinar console sign-in: the key is sent once; the server answers with a session cookie.
"use strict";

document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const err = document.getElementById("error");
  const key = new FormData(ev.target).get("apiKey");
  const r = await fetch("/console/login", {method: "POST", headers: {"content-type": "application/json"},
                                           body: JSON.stringify({apiKey: key})});
  if (!r.ok) {
    const d = await r.json().catch(() => ({}));
    err.textContent = d.message || `sign-in failed (${r.status})`;
    err.hidden = false;
    return;
  }
  const next = new URLSearchParams(location.search).get("next") || "/console/jobs";
  // only a path on this server: never an open redirect
  location.href = next.startsWith("/") && !next.startsWith("//") ? next : "/console/jobs";
});

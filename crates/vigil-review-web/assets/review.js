// The review pages' one script: every button with data-method/data-url calls
// the review API (with the session's CSRF token) and then reloads, or goes
// where data-go says; keyboard shortcuts for triage. No framework, no build.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content ?? "";

function flash(message, error) {
  const el = document.getElementById("flash");
  if (!el) return;
  el.textContent = message;
  el.classList.toggle("error", Boolean(error));
}

async function call(method, url, body) {
  const headers = { "X-CSRF-Token": csrf() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "same-origin" });
  const text = await r.text();
  const json = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error(json?.error?.message ?? `${r.status} ${r.statusText}`);
  return { status: r.status, json };
}

function go(target, answer) {
  if (target === "case") {
    if (answer.status === 204) { flash("No case waits in this queue."); return; }
    location.href = `/review/cases/${answer.json.claim.case}`;
  } else if (target) {
    location.href = target;
  } else {
    location.reload();
  }
}

async function act(button) {
  let body = button.dataset.body ? JSON.parse(button.dataset.body) : undefined;
  if (body === undefined && button.dataset.method === "POST") body = {};
  button.disabled = true;
  try {
    const answer = await call(button.dataset.method, button.dataset.url, body);
    if (answer.json?.outcome === "proposed") sessionStorage.setItem("flash", "Proposed: a second analyst must confirm it.");
    go(button.dataset.go, answer);
  } catch (e) {
    flash(e.message, true);
    button.disabled = false;
  }
}

const later = (minutes) => new Date(Date.now() + Number(minutes) * 60000).toISOString();

// The bulk form of the queue page: one action on every selected case, then
// what happened to each, said before the page reloads.
async function bulk(data) {
  const cases = [...document.querySelectorAll('input[name="case"]:checked')].map((c) => Number(c.value));
  if (cases.length === 0) { flash("Select cases first (their boxes, or a for the whole page).", true); return; }
  const what = data.get("action");
  let action;
  if (what === "fraud" || what === "genuine") action = { verdict: what };
  else if (what === "tag") {
    const tag = String(data.get("tag") ?? "").trim();
    if (!tag) { flash("Give the tag.", true); return; }
    action = { tag };
  } else action = { snooze: later(data.get("minutes")) };
  const answer = await call("POST", "/api/v1/review/bulk", { cases, action });
  const outcomes = answer.json.outcomes;
  const failed = outcomes.filter((o) => o.error);
  const resolved = outcomes.reduce((n, o) => n + o.resolved, 0);
  const proposed = outcomes.reduce((n, o) => n + o.proposed, 0);
  let said = `${outcomes.length - failed.length} of ${outcomes.length} cases done`;
  if (action.verdict) said += `: ${resolved} payments resolved, ${proposed} waiting for a second analyst`;
  if (failed.length) said += `. Left: ${failed.map((o) => `#${o.case} (${o.error.message})`).join("; ")}`;
  sessionStorage.setItem("flash", said);
  location.reload();
}

function selectPayment(step) {
  const all = [...document.querySelectorAll("article.payment")];
  if (all.length === 0) return null;
  let i = all.findIndex((a) => a.classList.contains("selected"));
  if (i < 0) i = Math.max(0, all.findIndex((a) => a.classList.contains("open")));
  else i = Math.min(all.length - 1, Math.max(0, i + step));
  all.forEach((a) => a.classList.remove("selected"));
  all[i].classList.add("selected");
  all[i].scrollIntoView({ block: "nearest" });
  return all[i];
}

document.addEventListener("click", (e) => {
  const b = e.target.closest("button[data-url]");
  if (b) { e.preventDefault(); act(b); }
});

document.addEventListener("change", (e) => {
  if (e.target.id === "select-all") {
    document.querySelectorAll('input[name="case"]').forEach((c) => { c.checked = e.target.checked; });
  }
});

document.addEventListener("submit", async (e) => {
  const form = e.target;
  const data = new FormData(form);
  try {
    if (form.id === "login") {
      e.preventDefault();
      await call("POST", "/api/v1/review/session", { name: data.get("name"), password: data.get("password") });
      location.href = form.dataset.go;
    } else if (form.dataset.noteUrl) {
      e.preventDefault();
      await call("POST", form.dataset.noteUrl, { body: data.get("body") });
      location.reload();
    } else if (form.dataset.tagUrl) {
      e.preventDefault();
      await call("PUT", form.dataset.tagUrl + encodeURIComponent(data.get("tag")));
      location.reload();
    } else if (form.dataset.snoozeUrl) {
      e.preventDefault();
      await call("POST", form.dataset.snoozeUrl, { until: later(data.get("minutes")) });
      location.href = "/review";
    } else if (form.dataset.escalateUrl) {
      e.preventDefault();
      await call("POST", form.dataset.escalateUrl, { reason: data.get("reason") });
      location.href = "/review";
    } else if (form.id === "bulk") {
      e.preventDefault();
      await bulk(data);
    }
  } catch (err) {
    flash(err.message, true);
  }
});

document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || e.target.closest("input, textarea, select")) return;
  const click = (sel) => { const b = document.querySelector(sel); if (b) { e.preventDefault(); b.click(); } };
  switch (e.key) {
    case "n": click("#claim-next"); break;
    case "r": click("#release"); break;
    case "j": e.preventDefault(); selectPayment(1); break;
    case "k": e.preventDefault(); selectPayment(-1); break;
    case "f": case "g": {
      const p = document.querySelector("article.payment.selected") ?? selectPayment(0);
      const b = p?.querySelector(`button[data-verdict="${e.key === "f" ? "fraud" : "genuine"}"]`);
      if (b) { e.preventDefault(); b.click(); }
      break;
    }
    case "/": { const s = document.getElementById("search"); if (s) { e.preventDefault(); s.focus(); } break; }
    case "a": { const all = document.getElementById("select-all"); if (all) { e.preventDefault(); all.click(); } break; }
  }
});

document.addEventListener("DOMContentLoaded", () => {
  const pending = sessionStorage.getItem("flash");
  if (pending) { sessionStorage.removeItem("flash"); flash(pending); }
  if (document.querySelector("article.payment.open")) selectPayment(0);
});

// Slipway's own script: live run pages and the windowed log viewer. No third-party
// code; loaded with `defer` under a Content-Security-Policy that forbids inline script.
"use strict";

// ---------------------------------------------------------------- run page, live

// On every status change of the run (server-sent events), the live part of the page
// (a run page's, or an environment page's rollouts)
// is fetched again from the server, which renders it, and patched in place. A rollout
// moves on (steps, weights, measurements) without a stage changing state, so while one
// on the page has not ended, the part is fetched every two seconds too. The patch
// changes only the nodes that differ, so a control nobody changed stays the same node:
// it keeps the keyboard focus, what was typed into it, and a click under way.
const ROLLOUT_POLL_MS = 2000;
const FOCUSABLE = "a[href], button, input:not([type=hidden]), select, textarea, [tabindex]";

// Makes `old` (in the page) look like `fresh` (parsed, same tag), node by node.
function morph(old, fresh) {
  if (old.nodeType !== Node.ELEMENT_NODE) {
    if (old.nodeValue !== fresh.nodeValue) old.nodeValue = fresh.nodeValue;
    return;
  }
  // A group a person folded or unfolded (`<details open>`) stays as they left it.
  const kept = (a) => old.tagName === "DETAILS" && a.name === "open";
  for (const a of [...old.attributes]) if (!kept(a) && !fresh.hasAttribute(a.name)) old.removeAttribute(a.name);
  for (const a of [...fresh.attributes]) if (!kept(a) && old.getAttribute(a.name) !== a.value) old.setAttribute(a.name, a.value);
  const olds = [...old.childNodes];
  const fresh_ = [...fresh.childNodes];
  fresh_.forEach((n, i) => {
    const o = olds[i];
    if (!o) old.append(n);
    else if (o.nodeType !== n.nodeType || o.nodeName !== n.nodeName
      || (o.nodeType === Node.ELEMENT_NODE && o.id !== n.id)) old.replaceChild(n, o);
    else if (!o.isEqualNode(n)) morph(o, n);
  });
  for (const o of olds.slice(fresh_.length)) o.remove();
}

function patchKeepingFocus(section, html) {
  const active = document.activeElement;
  const inside = active && active !== section && section.contains(active);
  const focusedId = inside ? active.id : "";
  const focusedAt = inside ? [...section.querySelectorAll(FOCUSABLE)].indexOf(active) : -1;
  const typed = [];
  for (const input of section.querySelectorAll("input[id], textarea[id]")) {
    if (input.type !== "hidden" && input.value !== input.defaultValue) typed.push([input, input.value]);
  }
  const fresh = document.createElement(section.tagName);
  fresh.innerHTML = html;
  for (const a of section.attributes) fresh.setAttribute(a.name, a.value);
  morph(section, fresh);
  // A replaced input gets what was typed; a replaced control gets the focus back.
  for (const [input, value] of typed) {
    const now = document.getElementById(input.id);
    if (now && now !== input) now.value = value;
  }
  if (inside && !section.contains(active)) {
    const again = focusedId ? document.getElementById(focusedId)
      : focusedAt >= 0 ? section.querySelectorAll(FOCUSABLE)[focusedAt] : null;
    if (again) again.focus();
  }
}

function liveRun(section) {
  let pending = false;
  let last = "";
  let asked = 0;
  let shown = 0;
  const refresh = () => {
    if (pending) return;
    pending = true;
    setTimeout(async () => {
      pending = false;
      const n = ++asked;
      try {
        const r = await fetch(section.dataset.partial, { credentials: "same-origin" });
        const html = r.ok ? await r.text() : "";
        // An older answer that arrives after a newer one is dropped.
        if (html && n > shown) {
          shown = n;
          if (html !== last) {
            last = html;
            patchKeepingFocus(section, html);
          }
        }
      } catch (_) { /* the next event tries again */ }
    }, 150);
  };
  // A run page follows its run's events; an environment page only polls its rollouts.
  if (section.dataset.events) {
    const events = new EventSource(section.dataset.events);
    for (const kind of ["run", "stage"]) events.addEventListener(kind, refresh);
    events.addEventListener("end", () => { refresh(); events.close(); });
  }
  const poll = () => {
    if (section.querySelector("[data-rollout-live]") && !document.hidden) refresh();
    setTimeout(poll, ROLLOUT_POLL_MS);
  };
  setTimeout(poll, ROLLOUT_POLL_MS);
}

// A form with `data-confirm` asks first (the rollout's Abort); a native dialog, so the
// keyboard answers it. Delegated, so forms patched in by the live refresh ask too.
document.addEventListener("submit", (e) => {
  const form = e.target;
  const question = form instanceof HTMLFormElement ? form.dataset.confirm : "";
  if (question && !window.confirm(question)) e.preventDefault();
});

// ---------------------------------------------------------------- log viewer

// The log is windowed over the server's line index: only the lines in view (and a
// margin) are in the page, fetched in pages that a small cache keeps, so a log of a
// million lines opens at once and the tab's memory stays bounded.
const PAGE = 500;
const CACHED_PAGES = 40;
const MARGIN = 60;

// ANSI SGR colours (30–37, bold) to spans; everything else is dropped.
function ansi(text) {
  const out = document.createDocumentFragment();
  let fg = 0, bold = false, i = 0;
  const push = (s) => {
    if (!s) return;
    if (!fg && !bold) { out.append(s); return; }
    const span = document.createElement("span");
    if (fg) span.className = "fg-" + fg;
    if (bold) span.classList.add("b");
    span.textContent = s;
    out.append(span);
  };
  const re = /\x1b\[([0-9;]*)m/g;
  let m;
  while ((m = re.exec(text)) !== null) {
    push(text.slice(i, m.index));
    for (const code of (m[1] || "0").split(";").map(Number)) {
      if (code === 0) { fg = 0; bold = false; }
      else if (code === 1) bold = true;
      else if (code === 22) bold = false;
      else if (code >= 30 && code <= 37) fg = code;
      else if (code === 39) fg = 0;
    }
    i = re.lastIndex;
  }
  push(text.slice(i).replace(/\x1b\[[0-9;?]*[A-Za-z]/g, ""));
  return out;
}

function logViewer(box) {
  const space = box.querySelector(".log-space");
  const rows = box.querySelector(".log-rows");
  const count = document.getElementById("log-count");
  const lineH = parseFloat(getComputedStyle(document.documentElement).getPropertyValue("--line-h")) || 18;
  let total = Number(box.dataset.total) || 0;
  let follow = box.dataset.finished !== "true";
  let stick = false;
  const pages = new Map(); // page number → array of lines (LRU by insertion order)
  const loading = new Set();
  let drawn = "";

  const setTotal = (n) => {
    total = n;
    space.style.height = total * lineH + "px";
    if (count) count.textContent = total + " lines";
  };
  setTotal(total);

  const remember = (p, lines) => {
    pages.delete(p);
    pages.set(p, lines);
    while (pages.size > CACHED_PAGES) pages.delete(pages.keys().next().value);
  };

  const load = async (p) => {
    if (pages.has(p) || loading.has(p)) return;
    loading.add(p);
    try {
      const url = box.dataset.lines + "?from=" + (p * PAGE + 1) + "&limit=" + PAGE;
      const r = await fetch(url, { credentials: "same-origin" });
      if (r.ok) {
        const page = await r.json();
        remember(p, page.lines);
        if (page.total > total) setTotal(page.total);
        drawn = "";
        schedule();
      }
    } finally {
      loading.delete(p);
    }
  };

  const lineOf = (n) => {
    const p = Math.floor((n - 1) / PAGE);
    const lines = pages.get(p);
    return lines ? lines[(n - 1) - p * PAGE] : undefined;
  };

  let frame = 0;
  const schedule = () => { if (!frame) frame = requestAnimationFrame(draw); };
  function draw() {
    frame = 0;
    if (stick) box.scrollTop = box.scrollHeight;
    const first = Math.max(1, Math.floor(box.scrollTop / lineH) - MARGIN);
    const last = Math.min(total, Math.ceil((box.scrollTop + box.clientHeight) / lineH) + MARGIN);
    for (let p = Math.floor((first - 1) / PAGE); p <= Math.floor((last - 1) / PAGE) && last >= first; p++) load(p);
    const key = first + ":" + last + ":" + total;
    if (key === drawn) return;
    drawn = key;
    const target = location.hash.startsWith("#L") ? Number(location.hash.slice(2)) : 0;
    const frag = document.createDocumentFragment();
    for (let n = first; n <= last; n++) {
      const row = document.createElement("div");
      row.className = "ln";
      row.id = "L" + n;
      if (n === target) row.classList.add("hit");
      const a = document.createElement("a");
      a.className = "no";
      a.href = "#L" + n;
      a.textContent = n;
      row.append(a);
      const line = lineOf(n);
      if (line) row.append(ansi(line.text));
      frag.append(row);
    }
    rows.style.top = (first - 1) * lineH + "px";
    rows.replaceChildren(frag);
  }

  const goTo = (n) => {
    stick = false;
    box.scrollTop = Math.max(0, (n - 1) * lineH - box.clientHeight / 3);
    drawn = "";
    schedule();
  };
  box.addEventListener("scroll", () => {
    stick = follow && box.scrollTop + box.clientHeight >= box.scrollHeight - lineH * 2;
    schedule();
  });
  window.addEventListener("hashchange", () => {
    if (location.hash.startsWith("#L")) goTo(Number(location.hash.slice(2)));
  });
  const end = document.getElementById("log-end");
  if (end) end.addEventListener("click", () => {
    box.scrollTop = box.scrollHeight;
    stick = follow;
    schedule();
    box.focus();
  });

  if (location.hash.startsWith("#L")) goTo(Number(location.hash.slice(2)));
  else schedule();

  // Live tail: new lines extend the log; the view follows when it is at the end.
  if (follow) {
    const events = new EventSource(box.dataset.follow + "?from=" + (total + 1));
    events.addEventListener("line", (e) => {
      const line = JSON.parse(e.data);
      const p = Math.floor((line.number - 1) / PAGE);
      const lines = pages.get(p);
      if (lines && lines.length === (line.number - 1) - p * PAGE) lines.push(line);
      if (line.number > total) setTotal(line.number);
      drawn = "";
      schedule();
    });
    events.addEventListener("end", () => { follow = false; stick = false; events.close(); });
  }
  box.dataset.ready = "true";
}

// ---------------------------------------------------------------- keyboard

// Shortcuts beyond Tab: `j`/`k` move through the page's list (runs, stages, gates,
// people, deployments), `Enter` then opens the item's link as usual; `/` goes to the
// page's search or filter; `g` then `d`, `i` or `l` goes to the dashboard, the
// approvals inbox or the failing step's log; `g` then `e` to the end of a log; `?`
// shows them all. Nothing happens while a person types in a field or holds a modifier.
const NAV_ITEMS = "#runs tbody tr, #repos tbody tr, .stages .stage, .gate, .findings li, "
  + "#people tbody tr, #tokens tbody tr, #deployments tbody tr, #audit tbody tr, #matches a.no";
const GO_MS = 1500;

function typing(e) {
  const t = e.target;
  return t instanceof HTMLElement
    && (t.isContentEditable || t.matches("input, textarea, select"));
}

function moveThrough(step) {
  const items = [...document.querySelectorAll(NAV_ITEMS)].filter((e) => e.offsetParent !== null);
  if (!items.length) return;
  const at = items.findIndex((e) => e.classList.contains("kb-current"));
  const next = items[at < 0 ? (step > 0 ? 0 : items.length - 1)
    : Math.max(0, Math.min(items.length - 1, at + step))];
  for (const e of items) e.classList.remove("kb-current");
  next.classList.add("kb-current");
  // The item's own link takes the focus (so Enter opens it); else the item itself.
  let target = next.matches("a[href]") ? next : next.querySelector("a[href]");
  if (!target) {
    if (!next.hasAttribute("tabindex")) next.setAttribute("tabindex", "-1");
    target = next;
  }
  target.focus();
  next.scrollIntoView({ block: "nearest" });
}

function goTo(where) {
  if (where === "d") location.href = "/";
  else if (where === "i") location.href = "/inbox";
  else if (where === "l") {
    const log = document.querySelector("#failure a[href*='/logs/']")
      || document.querySelector(".steps a[href*='/logs/']");
    if (log) location.href = log.getAttribute("href");
  } else if (where === "e") {
    const end = document.getElementById("log-end");
    if (end) end.click();
  }
}

function shortcuts() {
  const help = document.getElementById("shortcuts");
  let go = 0;
  document.addEventListener("keydown", (e) => {
    if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey || typing(e)) return;
    if (help && help.open) return; // the dialog answers Escape itself
    if (go && Date.now() - go < GO_MS) {
      go = 0;
      goTo(e.key);
      e.preventDefault();
      return;
    }
    go = 0;
    switch (e.key) {
      case "j": moveThrough(1); break;
      case "k": moveThrough(-1); break;
      case "g": go = Date.now(); break;
      case "/": {
        const search = document.querySelector("form[role=search] input, form.filters input, main input[type=search]");
        if (!search) return;
        search.focus();
        search.select();
        break;
      }
      case "?":
        if (!help) return;
        help.showModal();
        break;
      default: return;
    }
    e.preventDefault();
  });
  if (help) {
    const close = help.querySelector("button");
    if (close) close.addEventListener("click", () => help.close());
  }
}

document.addEventListener("DOMContentLoaded", () => {
  shortcuts();
  const live = document.querySelector("section[data-partial]");
  if (live) liveRun(live);
  const log = document.getElementById("log");
  if (log) logViewer(log);
});

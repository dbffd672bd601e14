// Shared helpers for the annotation pages. Rule of this code base: text from the server (prompts,
// model responses, usernames) reaches the page only through text nodes (el() / textContent), never
// through innerHTML, so markup or script inside model output is shown, not run.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// A random key per submission; crypto.getRandomValues works on plain-HTTP LAN addresses too,
// where crypto.randomUUID does not.
function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
  }
}

// fetch() with the CSRF header, JSON bodies and readable errors. A 401 sends the user to log in.
async function api(method, path, body, headers) {
  const res = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: { "X-Requested-With": "rlhfkit", "Content-Type": "application/json", ...(headers || {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 401 && !path.startsWith("/api/auth/")) {
    location.href = "/login?next=" + encodeURIComponent(location.pathname);
    throw new ApiError(401, "not logged in");
  }
  if (res.status === 204) return null;
  const type = res.headers.get("content-type") || "";
  const data = type.includes("json") ? await res.json() : await res.text();
  if (!res.ok) throw new ApiError(res.status, (data && data.detail) || data);
  return data;
}

// Retries a submission on network errors and 5xx with the same idempotency key, so a retry after a
// lost answer (or a server restart) cannot store the label twice.
async function apiWithRetry(method, path, body, key, tries = 6) {
  let wait = 300;
  for (let attempt = 1; ; attempt++) {
    try {
      return await api(method, path, body, { "Idempotency-Key": key });
    } catch (err) {
      const transient = !(err instanceof ApiError) || err.status >= 500;
      if (!transient || attempt >= tries) throw err;
      await new Promise((r) => setTimeout(r, wait));
      wait *= 2;
    }
  }
}

function toast(message, kind) {
  const box = document.getElementById("toast");
  if (!box) return;
  box.textContent = message;
  box.className = "toast show " + (kind || "");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (box.className = "toast"), 2200);
}

async function logout() {
  await api("POST", "/api/auth/logout");
  location.href = "/login";
}

// The project a page works on: ?project=NAME in its address, else the default one. Links between
// pages carry it along.
function currentProject() {
  return new URLSearchParams(location.search).get("project") || "default";
}

function withProject(path, extra) {
  const q = new URLSearchParams({ project: currentProject(), ...(extra || {}) });
  return `${path}?${q}`;
}

// The top bar's links, by role; the current page is marked.
function fillNav(me) {
  const nav = document.getElementById("links");
  if (!nav) return;
  const rank = { annotator: 0, reviewer: 1, admin: 2 }[me.role];
  const links = [
    ["/", "Label", 0], ["/history", "My labels", 0], ["/guidelines", "Guidelines", 0],
    ["/review", "Review", 1], ["/leaderboard", "Leaderboard", 1], ["/admin", "Dashboard", 2],
  ];
  nav.replaceChildren(...links.filter(([, , need]) => rank >= need).map(([path, title]) =>
    el("a", { href: withProject(path), class: location.pathname === path ? "current" : null }, title)));
  document.getElementById("who").textContent = `${me.username} · ${me.role}`;
}

// A project picker (a <select id="project">) that reloads the page in the chosen project.
async function fillProjects() {
  const box = document.getElementById("project");
  if (!box) return;
  const projects = await api("GET", "/api/projects");
  const here = currentProject();
  box.replaceChildren(...projects.map((p) =>
    el("option", { value: p.name, selected: p.name === here }, p.title ? `${p.title} (${p.name})` : p.name)));
  box.addEventListener("change", () => {
    const q = new URLSearchParams(location.search);
    q.set("project", box.value);
    q.delete("edit");
    location.search = q.toString();
  });
}

// An answer in words, naming responses by their number in the task (1-based) for reviewers and
// history, where responses are shown in their stored order.
function describeAnswer(kind, answer) {
  const n = (i) => `response ${i + 1}`;
  if (kind === "pairwise") {
    if (typeof answer.choice === "number") return `prefers ${n(answer.choice)}`;
    return answer.choice === "tie" ? "tie" : "both bad";
  }
  if (kind === "ranking") return "ranking " + answer.ranking.map((i) => i + 1).join(" > ");
  if (kind === "rating") return "ratings " + answer.ratings.join(", ");
  return "thumbs " + answer.thumbs.map((t) => (t ? "up" : "down")).join(", ");
}

// The prompt of an item: a chat transcript when it is a conversation, else markdown.
function renderPrompt(task) {
  return task.messages ? renderChat(task.messages) : renderMarkdown(task.prompt);
}

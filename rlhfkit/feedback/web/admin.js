// The dashboard: quality figures, people, task upload, export (admins) and the review queue
// (reviewers and admins). Every server string goes in as text (see common.js).
"use strict";

const fmt = (x, digits = 2) => (x === null || x === undefined ? "–" : typeof x === "number" ? x.toFixed(digits) : String(x));
const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(0) + "%");

function table(id, head, rows) {
  document.getElementById(id).replaceChildren(
    el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.length ? rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c))))
      : el("tr", {}, el("td", { colspan: head.length, class: "muted" }, "nothing yet"))));
}

async function loadStats() {
  const s = await api("GET", "/api/admin/stats");
  const t = s.totals;
  document.getElementById("totals").replaceChildren(...[
    ["Labels", t.labels], ["Items", t.tasks], [`Items with ${t.overlap} labels`, t.complete_tasks],
    ["Gold items", t.gold_tasks], ["People", t.users],
  ].map(([name, value]) => el("div", { class: "card tile" }, el("div", { class: "tile-value" }, String(value)),
    el("div", { class: "muted" }, name))));
  table("agreement", ["Question", "Units", "Labels", "Cohen's κ (mean)", "Fleiss' κ", "Krippendorff's α"],
    Object.entries(s.agreement).map(([kind, a]) => [kind, a.units, a.labels,
      a.cohen_kappa_mean === null ? "–" : `${fmt(a.cohen_kappa_mean)} (${a.cohen_pairs} pairs)`,
      fmt(a.fleiss_kappa), fmt(a.krippendorff_alpha)]));
  table("annotators", ["Annotator", "Role", "Labels", "Labels / hour", "Median s / item", "Gold seen", "Gold accuracy"],
    s.annotators.map((a) => [a.user, a.role, a.labels, fmt(a.labels_per_hour, 0), fmt(a.median_seconds, 1),
      a.gold_seen, pct(a.gold_accuracy)]));
}

async function loadUsers() {
  const users = await api("GET", "/api/admin/users");
  table("users", ["User", "Role", ""], users.map((u) => [u.username, u.role,
    el("button", { type: "button", class: "ghost", onclick: () => invite(u.username) }, "New invite")]));
}

function showInvite(username, token) {
  const link = `${location.origin}/login#invite=${token}`;
  document.getElementById("invite-out").textContent = `Invite link for ${username} (shown once): ${link}`;
}

async function invite(username) {
  const r = await api("POST", `/api/admin/users/${encodeURIComponent(username)}/invite`);
  showInvite(username, r.invite_token);
}

async function createUser(e) {
  e.preventDefault();
  const username = document.getElementById("new-username").value.trim();
  try {
    const r = await api("POST", "/api/admin/users", { username, role: document.getElementById("new-role").value });
    showInvite(username, r.invite_token);
    document.getElementById("new-username").value = "";
    await loadUsers();
  } catch (err) { toast(err.message, "error"); }
}

async function uploadTasks(e) {
  const file = e.target.files[0];
  if (!file) return;
  const text = await file.text();
  const out = document.getElementById("load-out");
  try {
    const rows = file.name.endsWith(".json") ? JSON.parse(text)
      : text.split("\n").filter((l) => l.trim()).map((l, i) => {
        try { return JSON.parse(l); } catch (err) { throw new Error(`${file.name}:${i + 1}: malformed JSON`); }
      });
    const r = await api("POST", "/api/admin/tasks", rows);
    out.textContent = `Loaded ${r.added} items (${r.skipped_existing} were already there).`;
    await loadStats();
  } catch (err) { out.textContent = "Not loaded: " + err.message; }
}

function exportLabels(e) {
  e.preventDefault();
  const q = new URLSearchParams({
    kind: document.getElementById("export-kind").value,
    aggregate: document.getElementById("export-aggregate").value,
    drop_ties: document.getElementById("export-drop-ties").checked,
  });
  location.href = "/api/admin/export?" + q;
}

async function review(labelId, status) {
  await api("POST", `/api/review/labels/${labelId}`, { status });
  toast(`Label #${labelId} ${status}`, "ok");
  await loadQueue();
}

function describe(kind, answer) {
  if (kind === "pairwise") return typeof answer.choice === "number" ? `prefers response ${answer.choice}` : answer.choice.replace("_", " ");
  if (kind === "ranking") return "ranking " + answer.ranking.join(" > ");
  if (kind === "rating") return "ratings " + answer.ratings.join(", ");
  return "thumbs " + answer.thumbs.map((t) => (t ? "up" : "down")).join(", ");
}

async function loadQueue() {
  const items = await api("GET", "/api/review/queue");
  const box = document.getElementById("queue");
  if (!items.length) { box.replaceChildren(el("p", { class: "muted" }, "Nothing to review.")); return; }
  box.replaceChildren(...items.map((item) => el("div", { class: "queue-item" },
    el("div", { class: "row-between" }, el("strong", {}, `Item ${item.task_id} · ${item.kind}`),
      el("span", {}, item.disagree ? el("span", { class: "badge warn" }, "disagree") : null,
        item.flagged ? el("span", { class: "badge danger" }, "flagged") : null)),
    el("p", { class: "clip" }, item.prompt),
    el("ul", { class: "labels" }, item.labels.map((l) => el("li", {},
      el("span", {}, `${l.annotator}: ${describe(item.kind, l.answer)}`),
      l.flags ? el("span", { class: "muted" }, " · flags " + JSON.stringify(l.flags)) : null,
      l.reason ? el("span", { class: "muted" }, " · “" + l.reason + "”") : null,
      el("span", { class: "review-buttons" },
        l.review_status ? el("span", { class: "badge" }, l.review_status) : null,
        el("button", { type: "button", class: "ghost", onclick: () => review(l.id, "accepted") }, "Accept"),
        el("button", { type: "button", class: "ghost", onclick: () => review(l.id, "rejected") }, "Reject"))))))));
}

document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("logout").addEventListener("click", logout);
  const me = await api("GET", "/api/me");
  document.getElementById("who").textContent = `${me.username} · ${me.role}`;
  if (me.role === "admin") {
    document.getElementById("admin-only").hidden = false;
    document.getElementById("user-form").addEventListener("submit", createUser);
    document.getElementById("task-file").addEventListener("change", uploadTasks);
    document.getElementById("export-form").addEventListener("submit", exportLabels);
    await Promise.all([loadStats(), loadUsers()]);
  }
  await loadQueue();
  document.body.dataset.ready = "1";
});

// The dashboard (admins): quality figures of the project, people (roles, deactivation, sessions,
// invites), the project's title, guidelines and suggestion setting, task upload, export.
// Every server string goes in as text (see common.js).
"use strict";

const fmt = (x, digits = 2) => (x === null || x === undefined ? "–" : typeof x === "number" ? x.toFixed(digits) : String(x));
const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(0) + "%");
const $ = (id) => document.getElementById(id);
let me = null;

function table(id, head, rows) {
  $(id).replaceChildren(
    el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.length ? rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c))))
      : el("tr", {}, el("td", { colspan: head.length, class: "muted" }, "nothing yet"))));
}

async function loadStats() {
  const s = await api("GET", withProject("/api/admin/stats"));
  const t = s.totals;
  $("totals").replaceChildren(...[
    ["Labels", t.labels], ["Items", t.tasks], [`Items with ${t.overlap} labels`, t.complete_tasks],
    ["Gold items", t.gold_tasks], ["People", t.users],
  ].map(([name, value]) => el("div", { class: "card tile" }, el("div", { class: "tile-value" }, String(value)),
    el("div", { class: "muted" }, name))));
  table("agreement", ["Question", "Units", "Labels", "Cohen's κ (mean)", "Fleiss' κ", "Krippendorff's α"],
    Object.entries(s.agreement).map(([kind, a]) => [kind, a.units, a.labels,
      a.cohen_kappa_mean === null ? "–" : `${fmt(a.cohen_kappa_mean)} (${a.cohen_pairs} pairs)`,
      fmt(a.fleiss_kappa), fmt(a.krippendorff_alpha)]));
  table("annotators", ["Annotator", "Role", "Labels", "Labels / hour", "Median s / item", "Gold seen", "Gold accuracy", "Suggestions kept"],
    s.annotators.map((a) => [a.user, a.role, a.labels, fmt(a.labels_per_hour, 0), fmt(a.median_seconds, 1),
      a.gold_seen, pct(a.gold_accuracy), a.suggestions_shown ? `${pct(a.suggestions_kept)} of ${a.suggestions_shown}` : "–"]));
}

async function changeUser(username, change, message) {
  try {
    await api("PATCH", `/api/admin/users/${encodeURIComponent(username)}`, change);
    toast(message, "ok");
  } catch (err) { toast(err.message, "error"); }
  await loadUsers();
}

async function revoke(username) {
  try {
    const r = await api("POST", `/api/admin/users/${encodeURIComponent(username)}/revoke`);
    toast(`${username}: ${r.sessions_ended} sessions ended`, "ok");
  } catch (err) { toast(err.message, "error"); }
  await loadUsers();
}

function userRow(u) {
  const role = el("select", { "data-role-of": u.username, "aria-label": `Role of ${u.username}`,
    onchange: (e) => changeUser(u.username, { role: e.target.value }, `${u.username} is now ${e.target.value}`) },
  ["annotator", "reviewer", "admin"].map((r) => el("option", { selected: r === u.role }, r)));
  const active = el("button", { type: "button", class: "ghost", "data-active-of": u.username,
    onclick: () => changeUser(u.username, { active: !u.active }, `${u.username} ${u.active ? "deactivated" : "reactivated"}`) },
  u.active ? "Deactivate" : "Reactivate");
  return el("tr", { "data-user": u.username, class: u.active ? "" : "inactive" },
    el("td", {}, u.username), el("td", {}, role),
    el("td", {}, u.active ? "active" : "deactivated"), el("td", {}, u.has_password ? "password" : "invite only"),
    el("td", { "data-sessions-of": u.username }, String(u.sessions)),
    el("td", { class: "row-actions" }, active,
      el("button", { type: "button", class: "ghost", "data-revoke": u.username, onclick: () => revoke(u.username) }, "End sessions"),
      el("button", { type: "button", class: "ghost", "data-invite": u.username, onclick: () => invite(u.username) }, "New invite")));
}

async function loadUsers() {
  const users = await api("GET", "/api/admin/users");
  $("users").replaceChildren(
    el("thead", {}, el("tr", {}, ["User", "Role", "State", "Login", "Sessions", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, users.map(userRow)));
}

function showInvite(username, token) {
  const link = `${location.origin}/login#invite=${token}`;
  $("invite-out").textContent = `Invite link for ${username} (shown once): ${link}`;
}

async function invite(username) {
  try {
    const r = await api("POST", `/api/admin/users/${encodeURIComponent(username)}/invite`);
    showInvite(username, r.invite_token);
  } catch (err) { toast(err.message, "error"); }
  await loadUsers();
}

async function createUser(e) {
  e.preventDefault();
  const username = $("new-username").value.trim();
  try {
    const r = await api("POST", "/api/admin/users", { username, role: $("new-role").value });
    showInvite(username, r.invite_token);
    $("new-username").value = "";
    await loadUsers();
  } catch (err) { toast(err.message, "error"); }
}

async function loadProject() {
  const p = await api("GET", `/api/projects/${encodeURIComponent(currentProject())}`);
  $("p-title").value = p.title || "";
  $("p-guidelines").value = p.guidelines || "";
  $("p-suggestions").checked = p.suggestions;
}

async function saveProject(e) {
  e.preventDefault();
  try {
    await api("PATCH", `/api/admin/projects/${encodeURIComponent(currentProject())}`, {
      title: $("p-title").value, guidelines: $("p-guidelines").value, suggestions: $("p-suggestions").checked,
    });
    toast("Project saved", "ok");
  } catch (err) { toast(err.message, "error"); }
}

async function createProject(e) {
  e.preventDefault();
  const name = $("np-name").value.trim();
  try {
    await api("POST", "/api/admin/projects", { name });
    location.search = new URLSearchParams({ project: name }).toString();
  } catch (err) { toast(err.message, "error"); }
}

async function uploadTasks(e) {
  const file = e.target.files[0];
  if (!file) return;
  const text = await file.text();
  const out = $("load-out");
  // each row's line in the file (blank lines skipped), so an error names the line it is on, the server's too
  const json = file.name.endsWith(".json");
  const lines = json ? [] : text.split("\n").map((l, i) => [l, i + 1]).filter(([l]) => l.trim());
  const where = (item) => (json ? `${file.name} item ${item}` : `${file.name}:${lines[item - 1][1]}`);
  try {
    const rows = json ? JSON.parse(text) : lines.map(([l, line]) => {
      try { return JSON.parse(l); } catch (err) { throw new Error(`${file.name}:${line}: malformed JSON`); }
    });
    const r = await api("POST", withProject("/api/admin/tasks"), rows);
    out.textContent = `Loaded ${r.added} items (${r.skipped_existing} were already there).`;
    await loadStats();
  } catch (err) {
    const message = err.message.replace(/request body item (\d+)/g, (_, item) => where(Number(item)));
    out.textContent = "Not loaded: " + message;
  }
}

function exportLabels(e) {
  e.preventDefault();
  location.href = withProject("/api/admin/export", {
    kind: $("export-kind").value,
    aggregate: $("export-aggregate").value,
    drop_ties: $("export-drop-ties").checked,
  });
}

document.addEventListener("DOMContentLoaded", async () => {
  $("logout").addEventListener("click", logout);
  me = await api("GET", "/api/me");
  fillNav(me);
  await fillProjects();
  $("user-form").addEventListener("submit", createUser);
  $("project-form").addEventListener("submit", saveProject);
  $("new-project-form").addEventListener("submit", createProject);
  $("task-file").addEventListener("change", uploadTasks);
  $("export-form").addEventListener("submit", exportLabels);
  await Promise.all([loadStats(), loadUsers(), loadProject()]);
  document.body.dataset.ready = "1";
});

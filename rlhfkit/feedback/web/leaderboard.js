// The model leaderboard of a project (GET /api/review/leaderboard): rating, 95% bootstrap interval
// drawn as a bar on a shared axis, and each model's record.
"use strict";

function intervalBar(row, lo, hi) {
  const span = hi - lo || 1;
  const left = (x) => `${(100 * (x - lo)) / span}%`;
  const bar = el("div", { class: "ci" });
  if (row.lo !== null) {
    const width = `${(100 * (row.hi - row.lo)) / span}%`;
    bar.append(el("div", { class: "ci-range" }));  // positioned through the CSSOM, which the CSP allows
    bar.lastChild.style.left = left(row.lo);
    bar.lastChild.style.width = width;
  }
  const dot = el("div", { class: "ci-point" });
  dot.style.left = left(row.rating);
  bar.append(dot);
  return bar;
}

async function load() {
  const board = await api("GET", withProject("/api/review/leaderboard"));
  const table = document.getElementById("board");
  document.getElementById("summary").textContent = `${board.battles} votes · ${board.rows.length} models · ${board.n_bootstrap} bootstrap fits`;
  if (!board.rows.length) {
    table.replaceChildren(el("tbody", {}, el("tr", {}, el("td", { class: "muted" },
      "No votes between two named models yet. Tasks name each response's model with responses: [{\"text\", \"model\"}]."))));
    document.body.dataset.ready = "1";
    return;
  }
  const lo = Math.min(...board.rows.map((r) => (r.lo === null ? r.rating : r.lo)));
  const hi = Math.max(...board.rows.map((r) => (r.hi === null ? r.rating : r.hi)));
  const round = (x) => (x === null ? "–" : Math.round(x).toString());
  table.replaceChildren(
    el("thead", {}, el("tr", {}, ["#", "Model", "Rating", "95% interval", "", "Wins", "Losses", "Ties", "Votes"].map((h) => el("th", {}, h)))),
    el("tbody", {}, board.rows.map((r, i) => el("tr", { "data-model": r.model },
      el("td", {}, String(i + 1)), el("td", { class: "model" }, r.model), el("td", { class: "rating" }, round(r.rating)),
      el("td", { class: "muted" }, `${round(r.lo)} – ${round(r.hi)}`), el("td", { class: "ci-cell" }, intervalBar(r, lo, hi)),
      el("td", {}, String(r.wins)), el("td", {}, String(r.losses)), el("td", {}, String(r.ties)), el("td", {}, String(r.battles))))));
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("logout").addEventListener("click", logout);
  fillNav(await api("GET", "/api/me"));
  await fillProjects();
  try { await load(); } catch (err) { toast(err.message, "error"); document.body.dataset.ready = "1"; }
});

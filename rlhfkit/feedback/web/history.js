// An annotator's own labels, newest first, paged by the server (GET /api/history); each opens in the
// labelling page to be changed (/?edit=LABEL_ID).
"use strict";

const PAGE = 20;
let offset = 0;

function statusBadge(status) {
  const name = status || "waiting for review";
  return el("span", { class: "badge" + (status === "rejected" ? " danger" : status === "accepted" ? " ok" : "") }, name);
}

function responseLine(task, i, label) {
  const flags = (label.flags || {})[String(i)] || [];
  return el("li", {}, el("span", { class: "muted" }, `${i + 1}. `), el("span", { class: "clip-line" }, task.responses[i]),
    flags.length ? el("span", { class: "badge danger" }, flags.join(", ")) : null);
}

function row(item) {
  const { label, task } = item;
  return el("div", { class: "queue-item history-item", "data-label": label.id },
    el("div", { class: "row-between" },
      el("strong", {}, `#${label.id} · ${task.kind} · ${new Date(label.updated_at).toLocaleString()}`),
      el("span", {}, statusBadge(label.review_status),
        el("a", { class: "button-link", href: withProject("/", { edit: label.id }), "data-edit": label.id }, "Change"))),
    el("p", { class: "clip" }, task.prompt),  // a conversation's plain rendering ("user: ..."): compact
    el("ol", { class: "labels plain" }, task.responses.map((_, i) => responseLine(task, i, label))),
    el("p", {}, el("strong", {}, "Your answer: "), el("span", { class: "answer" }, describeAnswer(task.kind, label.answer)),
      label.reason ? el("span", { class: "muted" }, " · \u201c" + label.reason + "\u201d") : null));
}

async function load() {
  const page = await api("GET", withProject("/api/history", { limit: PAGE, offset }));
  document.getElementById("count").textContent = `${page.total} labels`;
  const box = document.getElementById("history");
  box.replaceChildren(...(page.items.length ? page.items.map(row) : [el("p", { class: "muted" }, "No labels here yet.")]));
  document.getElementById("page").textContent = page.total ? `${offset + 1}–${offset + page.items.length} of ${page.total}` : "";
  document.getElementById("prev").disabled = offset === 0;
  document.getElementById("next").disabled = offset + PAGE >= page.total;
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("logout").addEventListener("click", logout);
  document.getElementById("prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); load(); });
  document.getElementById("next").addEventListener("click", () => { offset += PAGE; load(); });
  fillNav(await api("GET", "/api/me"));
  await fillProjects();
  const saved = new URLSearchParams(location.search).get("saved");
  if (saved) toast(`Label #${Number(saved)} saved; it is back in the review queue`, "ok");
  await load();
});

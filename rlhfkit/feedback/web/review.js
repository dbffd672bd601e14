// The review queue: labels by others with their item (prompt, every response text), the answer, flags
// and reason, and the item's other labels; filters and paging run in SQL on the server
// (GET /api/review/queue). Accept or reject each label; the page then reloads the current page.
"use strict";

const PAGE = 10;
let offset = 0;
const $ = (id) => document.getElementById(id);

function filters() {
  const f = { status: $("f-status").value, focus: $("f-focus").value, limit: PAGE, offset };
  if ($("f-kind").value) f.kind = $("f-kind").value;
  if ($("f-annotator").value.trim()) f.annotator = $("f-annotator").value.trim();
  return f;
}

// What the label says about response i, shown on that response's card.
function verdict(kind, answer, i) {
  if (kind === "pairwise") {
    if (answer.choice === i) return ["chosen", "preferred"];
    if (typeof answer.choice === "number") return ["", "not preferred"];
    return ["", answer.choice === "tie" ? "tie" : "both bad"];
  }
  if (kind === "ranking") return [answer.ranking[0] === i ? "chosen" : "", `rank ${answer.ranking.indexOf(i) + 1}`];
  if (kind === "rating") return ["", `rated ${answer.ratings[i]}`];
  return [answer.thumbs[i] ? "chosen" : "", answer.thumbs[i] ? "thumbs up" : "thumbs down"];
}

function responseCard(task, label, i) {
  const [cls, text] = verdict(task.kind, label.answer, i);
  const flags = (label.flags || {})[String(i)] || [];
  return el("div", { class: "card response review-response " + cls, "data-index": i },
    el("div", { class: "row-between response-head" }, el("span", { class: "letter" }, `Response ${i + 1}`),
      el("span", {}, el("span", { class: "badge" + (cls ? " ok" : "") }, text),
        flags.map((f) => el("span", { class: "badge danger", "data-flag": f }, f)))),
    el("div", { class: "md response-text" }, renderMarkdown(task.responses[i])));
}

function item(entry) {
  const { label, task, others } = entry;
  const many = task.responses.length > 2;
  return el("article", { class: "queue-item", "data-label": label.id },
    el("div", { class: "row-between" },
      el("strong", {}, `Label #${label.id} · item ${task.id} · ${task.kind} · by ${label.annotator}`),
      el("span", {}, label.review_status
        ? el("span", { class: "badge" + (label.review_status === "rejected" ? " danger" : " ok") },
          `${label.review_status}${entry.reviewed_by ? " by " + entry.reviewed_by : ""}`)
        : el("span", { class: "badge warn" }, "waiting"))),
    el("div", { class: "prompt-box md" }, renderPrompt(task)),
    el("div", { class: many ? "stack" : "pair" }, task.responses.map((_, i) => responseCard(task, label, i))),
    el("p", { class: "answer-line" }, el("strong", {}, "Answer: "), el("span", { class: "answer" }, describeAnswer(task.kind, label.answer)),
      label.suggestion_accepted === null ? null
        : el("span", { class: "muted" }, label.suggestion_accepted ? " · kept the model's suggestion" : " · changed the model's suggestion")),
    label.reason ? el("p", { class: "reason" }, el("strong", {}, "Reason: "), el("q", {}, label.reason)) : null,
    others.length ? el("p", { class: "muted others" }, "Other labels on this item: ",
      others.map((o) => `${o.annotator}: ${describeAnswer(task.kind, o.answer)}${o.review_status ? ` (${o.review_status})` : ""}`).join(" · ")) : null,
    el("div", { class: "actions" },
      el("button", { type: "button", class: "secondary", "data-review": "accepted", onclick: () => review(label.id, "accepted") }, "Accept"),
      el("button", { type: "button", class: "secondary danger-button", "data-review": "rejected", onclick: () => review(label.id, "rejected") }, "Reject")));
}

async function review(labelId, status) {
  try {
    await api("POST", `/api/review/labels/${labelId}`, { status });
    toast(`Label #${labelId} ${status}`, "ok");
    await load();
  } catch (err) { toast(err.message, "error"); }
}

async function load() {
  const page = await api("GET", withProject("/api/review/queue", filters()));
  if (!page.items.length && offset > 0) { offset = Math.max(0, offset - PAGE); return load(); }
  $("count").textContent = `${page.total} labels`;
  $("queue").replaceChildren(...(page.items.length ? page.items.map(item) : [el("p", { class: "muted" }, "Nothing to review here.")]));
  $("page").textContent = page.total ? `${offset + 1}–${offset + page.items.length} of ${page.total}` : "";
  $("prev").disabled = offset === 0;
  $("next").disabled = offset + PAGE >= page.total;
  document.body.dataset.ready = "1";
  document.body.dataset.loads = String(Number(document.body.dataset.loads || 0) + 1); // for tests
}

document.addEventListener("DOMContentLoaded", async () => {
  $("logout").addEventListener("click", logout);
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); offset = 0; load(); });
  for (const id of ["f-status", "f-focus", "f-kind"]) $(id).addEventListener("change", () => { offset = 0; load(); });
  $("prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); load(); });
  $("next").addEventListener("click", () => { offset += PAGE; load(); });
  fillNav(await api("GET", "/api/me"));
  await fillProjects();
  await load();
});

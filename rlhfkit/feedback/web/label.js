// The labelling page: shows one item at a time from GET /api/next?project=..., collects the answer by
// mouse or keyboard, and submits it with an idempotency key (retried on network errors with the same
// key). With ?edit=LABEL_ID it shows one of the user's own labels instead and saves changes with PUT.
// A model's suggestion, when the project shows them, is pre-filled and marked; the server records
// whether the submitted answer kept it. A ranking is only submitted after the annotator moved a
// response or confirmed the order ("The order is right"), never in the shuffled order untouched.
"use strict";

const FLAGS = [["harmful", "h", "Harmful"], ["untrue", "u", "Untrue"], ["unhelpful", "p", "Unhelpful"]];
const LETTERS = "ABCDEFGHIJ";
const QUESTION = {
  pairwise: "Which response is better?",
  ranking: "Rank the responses, best first: drag them, use the arrows, or press a rank number.",
  rating: "Rate each response.",
  thumbs: "Is each response good?",
};
let state = null;
const $ = (id) => document.getElementById(id);
const editing = Number(new URLSearchParams(location.search).get("edit")) || null;

// ``given``: an answer to start from (the label being edited, or the model's suggestion).
function freshState(task, given, flags) {
  const order = task.responses.map((r) => r.index);
  const s = {
    task, order,
    text: Object.fromEntries(task.responses.map((r) => [r.index, r.text])),
    focus: order[0], choice: null, ranking: order.slice(), ratings: {}, thumbs: {}, flags: {},
    touched: false, diff: false, shownAt: performance.now(), key: newKey(), busy: false,
    suggested: editing ? null : task.suggestion || null,
  };
  if (given) {
    if (given.choice !== undefined) s.choice = given.choice;
    if (given.ranking) s.ranking = given.ranking.slice();
    (given.ratings || []).forEach((r, i) => (s.ratings[i] = r));
    (given.thumbs || []).forEach((t, i) => (s.thumbs[i] = t));
  }
  for (const [idx, names] of Object.entries(flags || {})) s.flags[idx] = new Set(names);
  s.touched = Boolean(editing); // an existing label's ranking was chosen by its annotator already
  return s;
}

// The responses in the order they are listed on screen (the current ranking for ranking items).
const listed = () => (state.task.kind === "ranking" ? state.ranking : state.order);
const letter = (idx) => LETTERS[state.order.indexOf(idx)];

function ready() {
  const { kind } = state.task;
  if (kind === "pairwise") return state.choice !== null;
  if (kind === "ranking") return state.touched;
  const answers = kind === "rating" ? state.ratings : state.thumbs;
  return state.order.every((i) => answers[i] !== undefined);
}

function answer() {
  const { kind } = state.task;
  const k = state.order.length;
  const byIndex = (obj) => Array.from({ length: k }, (_, i) => obj[i]);
  if (kind === "pairwise") return { choice: state.choice };
  if (kind === "ranking") return { ranking: state.ranking.slice() };
  if (kind === "rating") return { ratings: byIndex(state.ratings) };
  return { thumbs: byIndex(state.thumbs) };
}

function flagButtons(idx) {
  const set = state.flags[idx] || new Set();
  return el("div", { class: "flags" }, FLAGS.map(([name, key, title]) =>
    el("button", {
      type: "button", class: "flag" + (set.has(name) ? " on" : ""), "aria-pressed": String(set.has(name)),
      "data-flag": name, title: `Flag as ${name} (${key})`,
      onclick: (e) => { e.stopPropagation(); toggleFlag(idx, name); },
    }, title, " ", el("kbd", {}, key))));
}

function responseCard(idx, extra, diffNodes) {
  const body = el("div", { class: "md response-text" });
  body.append(diffNodes || renderMarkdown(state.text[idx]));
  return el("article", {
    class: "card response" + (state.focus === idx ? " focused" : ""), "data-index": idx,
    onclick: () => { state.focus = idx; render(); },
  },
  el("div", { class: "row-between response-head" }, el("span", { class: "letter" }, "Response " + letter(idx)),
    flagButtons(idx)),
  body, extra || null);
}

// Whether a value is what the model suggested (to mark it, so a changed suggestion stays visible).
function isSuggested(field, idx, value) {
  const s = state.suggested;
  if (!s) return false;
  if (field === "choice") return s.choice === value;
  return s[field] && s[field][idx] === value;
}

function suggestionNote() {
  if (!state.suggested) return null;
  const { kind } = state.task;
  let what;
  if (kind === "pairwise") {
    const c = state.suggested.choice;
    what = typeof c === "number" ? `${letter(c)} is better` : c === "tie" ? "a tie" : "both bad";
    what = `A model suggests: ${what}. Keep it (Enter) or choose another answer.`;
  } else if (kind === "ranking") {
    what = "The responses are ordered as a model suggests. Move them, or press \u201cThe order is right\u201d.";
  } else {
    what = "Pre-filled with a model's suggestions (marked). Change any you disagree with.";
  }
  return el("p", { class: "suggestion-note", id: "suggestion-note" }, what);
}

function renderPairwise() {
  const [a, b] = state.order;
  let diff = null;
  if (state.diff) diff = wordDiff(state.text[a], state.text[b]);
  const choices = [[a, "A is better", "1"], ["tie", "Tie", "t"], ["both_bad", "Both bad", "x"], [b, "B is better", "2"]];
  return [
    el("div", { class: "toolbar" }, el("span", { class: "question" }, QUESTION.pairwise),
      el("button", { type: "button", class: "ghost" + (state.diff ? " on" : ""), id: "diff-btn",
        onclick: () => { state.diff = !state.diff; render(); } },
      state.diff ? "Hide differences " : "Show differences ", el("kbd", {}, "d"))),
    state.diff && !diff ? el("p", { class: "muted" }, "These responses are too long to compare word by word.") : null,
    el("div", { class: "pair" }, responseCard(a, null, diff && diff[0]), responseCard(b, null, diff && diff[1])),
    el("div", { class: "choices" }, choices.map(([value, title, key]) => el("button", {
      type: "button", "data-choice": String(value),
      class: "choice" + (state.choice === value ? " selected" : "") + (isSuggested("choice", null, value) ? " suggested" : ""),
      onclick: () => { state.choice = value; render(); },
    }, title, " ", el("kbd", {}, key)))),
  ];
}

function move(idx, delta) {
  const list = state.ranking, from = list.indexOf(idx), to = from + delta;
  if (to < 0 || to >= list.length) return;
  list.splice(from, 1);
  list.splice(to, 0, idx);
  state.focus = idx;
  state.touched = true;
  render();
}

function confirmOrder() {
  state.touched = true;
  render();
}

function renderRanking() {
  const cards = state.ranking.map((idx, rank) => {
    const controls = el("div", { class: "rank-controls" },
      el("span", { class: "rank" }, "#" + (rank + 1)),
      el("button", { type: "button", class: "ghost", title: "Move up", "aria-label": "Move up",
        onclick: (e) => { e.stopPropagation(); move(idx, -1); } }, "▲"),
      el("button", { type: "button", class: "ghost", title: "Move down", "aria-label": "Move down",
        onclick: (e) => { e.stopPropagation(); move(idx, +1); } }, "▼"));
    const card = responseCard(idx, controls);
    card.classList.add("rankable");
    card.draggable = true;
    card.addEventListener("dragstart", (e) => { e.dataTransfer.setData("text/plain", String(idx)); card.classList.add("dragging"); });
    card.addEventListener("dragend", () => card.classList.remove("dragging"));
    card.addEventListener("dragover", (e) => e.preventDefault());
    card.addEventListener("drop", (e) => {
      e.preventDefault();
      const dragged = Number(e.dataTransfer.getData("text/plain"));
      if (Number.isNaN(dragged) || dragged === idx) return;
      const box = card.getBoundingClientRect();
      const list = state.ranking.filter((i) => i !== dragged);
      const at = list.indexOf(idx) + (e.clientY > box.top + box.height / 2 ? 1 : 0);
      list.splice(at, 0, dragged);
      state.ranking = list;
      state.focus = dragged;
      state.touched = true;
      render();
    });
    return card;
  });
  const confirm = el("button", {
    type: "button", id: "confirm-order", class: "secondary" + (state.touched ? " on" : ""),
    "aria-pressed": String(state.touched), onclick: confirmOrder,
  }, state.touched ? "Order confirmed " : "The order is right ", el("kbd", {}, "c"));
  return [el("div", { class: "toolbar" }, el("span", { class: "question" }, QUESTION.ranking), confirm),
    el("div", { class: "stack" }, cards)];
}

function renderScores() {
  const { kind, scale } = state.task;
  const cards = state.order.map((idx) => {
    let row;
    if (kind === "rating") {
      row = el("div", { class: "scale" }, el("span", { class: "muted" }, "poor"),
        Array.from({ length: scale }, (_, n) => n + 1).map((v) => el("button", {
          type: "button", "data-rating": v,
          class: "score" + (state.ratings[idx] === v ? " selected" : "") + (isSuggested("ratings", idx, v) ? " suggested" : ""),
          onclick: (e) => { e.stopPropagation(); state.ratings[idx] = v; state.focus = idx; render(); },
        }, String(v))), el("span", { class: "muted" }, "excellent"));
    } else {
      row = el("div", { class: "scale" }, [[true, "Good", "y"], [false, "Bad", "n"]].map(([v, title, key]) => el("button", {
        type: "button",
        class: "thumb " + (v ? "up" : "down") + (state.thumbs[idx] === v ? " selected" : "") + (isSuggested("thumbs", idx, v) ? " suggested" : ""),
        "data-thumb": v ? "up" : "down",
        onclick: (e) => { e.stopPropagation(); state.thumbs[idx] = v; state.focus = idx; render(); },
      }, title, " ", el("kbd", {}, key))));
    }
    return responseCard(idx, row);
  });
  return [el("div", { class: "toolbar" }, el("span", { class: "question" }, QUESTION[kind])), el("div", { class: "stack" }, cards)];
}

function render() {
  const { kind } = state.task;
  const q = $("question");
  const parts = kind === "pairwise" ? renderPairwise() : kind === "ranking" ? renderRanking() : renderScores();
  q.replaceChildren(...[suggestionNote(), ...parts].filter(Boolean));
  $("submit").disabled = !ready() || state.busy;
  const todo = { pairwise: "Pick an answer", ranking: "Move a response, or confirm the order" }[kind] || "Answer every response";
  $("hint").textContent = ready() ? "" : todo;
}

function showTask(task, progress) {
  showProgress(progress);
  if (!task) {
    state = null;
    $("task-view").hidden = true;
    $("empty").hidden = false;
    document.body.dataset.task = "none";
    return;
  }
  state = freshState(task, task.suggestion);
  $("empty").hidden = true;
  $("task-view").hidden = false;
  $("prompt").replaceChildren(renderPrompt(task));
  $("kind-badge").textContent = kind_name(task);
  $("reason").value = "";
  render();
  window.scrollTo(0, 0);
  document.body.dataset.task = String(task.id); // lets browser tests wait for a given item
}

function kind_name(task) {
  const k = task.responses.length;
  return { pairwise: "Pairwise", ranking: `Ranking of ${k}`, rating: `Rating 1–${task.scale}`, thumbs: "Thumbs" }[task.kind];
}

function showProgress(p) {
  const total = p.done + p.remaining;
  $("bar-fill").style.width = total ? (100 * p.done / total).toFixed(1) + "%" : "100%";
  $("progress-text").textContent = `${p.done} labelled · ${p.remaining} to go`;
}

async function loadNext() {
  const data = await api("GET", withProject("/api/next"));
  showTask(data.task, data.progress);
}

// Edit mode: one of my labels, pre-filled with its answer, flags and reason; saved with PUT.
async function loadEdit() {
  const label = await api("GET", `/api/labels/${editing}`);
  const task = await api("GET", `/api/tasks/${label.task_id}`);
  $("empty").hidden = true;
  $("task-view").hidden = false;
  $("edit-banner").hidden = false;
  $("edit-banner-text").textContent = `Changing your label #${label.id} (it goes back to review when saved).`;
  $("skip").hidden = true;
  state = freshState(task, label.answer, label.flags);
  $("prompt").replaceChildren(renderPrompt(task));
  $("kind-badge").textContent = kind_name(task);
  $("reason").value = label.reason || "";
  render();
  document.body.dataset.task = String(task.id);
}

async function submit() {
  if (!state || !ready() || state.busy) return;
  state.busy = true;
  render();
  const flags = {};
  for (const [idx, set] of Object.entries(state.flags)) if (set.size) flags[idx] = Array.from(set);
  const body = {
    task_id: state.task.id, answer: answer(), reason: $("reason").value.trim() || null, flags,
    duration_ms: Math.round(performance.now() - state.shownAt),
  };
  let label;
  try {
    if (editing) {
      await api("PUT", `/api/labels/${editing}`, { answer: body.answer, reason: body.reason, flags });
      location.href = withProject("/history", { saved: editing });
      return;
    }
    // The key stands for this answer. A submission whose replies were all lost may still have been stored: sent
    // again under its key, a changed answer came back as the stored one, shown as "Saved", and the change was lost.
    const sent = JSON.stringify([body.answer, body.reason, flags]);
    if (state.keyFor !== undefined && state.keyFor !== sent) state.key = newKey();
    state.keyFor = sent;
    label = await apiWithRetry("POST", "/api/labels", body, state.key);
  } catch (err) {
    state.busy = false;
    render();
    toast("Not saved: " + err.message, "error");
    return;
  }
  toast(`Saved label #${label.id}`, "ok");
  try {
    await loadNext();
  } catch (err) {  // the label is stored: only the next item failed to come
    state.busy = false;
    render();
    toast(`Saved label #${label.id}; the next item did not load: ${err.message}`, "error");
  }
}

async function skip() {
  if (!state || editing) return;
  await api("POST", `/api/tasks/${state.task.id}/skip`);
  toast("Skipped");
  await loadNext();
}

function toggleFlag(idx, name) {
  const set = state.flags[idx] || (state.flags[idx] = new Set());
  set.has(name) ? set.delete(name) : set.add(name);
  state.focus = idx;
  render();
}

function moveFocus(delta) {
  const list = listed();
  const at = Math.max(0, Math.min(list.length - 1, list.indexOf(state.focus) + delta));
  state.focus = list[at];
  render();
  const card = document.querySelector(`.response[data-index="${state.focus}"]`);
  if (card) card.scrollIntoView({ block: "nearest" });
}

function onKey(e) {
  const help = $("help");
  if (e.key === "Escape") { help.hidden = true; if (e.target.id === "reason") e.target.blur(); return; }
  if (e.target.id === "reason") {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); submit(); }
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === "?") { help.hidden = !help.hidden; return; }
  if (!state || state.busy || !help.hidden) return;
  const { kind } = state.task;
  const key = e.key, lower = key.toLowerCase();
  const digit = /^[1-9]$/.test(key) ? Number(key) : null;
  let handled = true;
  if (key === "Enter") submit();
  else if (lower === "s" && !e.shiftKey) skip();
  else if (lower === "r") { e.preventDefault(); $("reason").focus(); }
  else if (kind === "ranking" && lower === "c") confirmOrder();
  else if (kind === "ranking" && e.shiftKey && (key === "ArrowUp" || key === "ArrowDown")) move(state.focus, key === "ArrowUp" ? -1 : 1);
  else if (key === "j" || key === "ArrowDown" || (kind === "pairwise" && key === "ArrowRight")) moveFocus(1);
  else if (key === "k" || key === "ArrowUp" || (kind === "pairwise" && key === "ArrowLeft")) moveFocus(-1);
  else if (FLAGS.some(([, k]) => k === lower)) toggleFlag(state.focus, FLAGS.find(([, k]) => k === lower)[0]);
  else if (kind === "pairwise") {
    const map = { 1: state.order[0], a: state.order[0], 2: state.order[1], b: state.order[1], t: "tie", x: "both_bad" };
    if (lower === "d") state.diff = !state.diff;
    else if (lower in map) state.choice = map[lower];
    else handled = false;
    if (handled) render();
  } else if (kind === "ranking" && digit && digit <= state.ranking.length) {
    move(state.focus, digit - 1 - state.ranking.indexOf(state.focus));
  } else if (kind === "rating" && digit && digit <= state.task.scale) {
    state.ratings[state.focus] = digit;
    moveFocus(1);
  } else if (kind === "thumbs" && (lower === "y" || lower === "n")) {
    state.thumbs[state.focus] = lower === "y";
    moveFocus(1);
  } else handled = false;
  if (handled) e.preventDefault();
}

async function start() {
  const me = await api("GET", "/api/me");
  fillNav(me);
  await fillProjects();
  $("guidelines-link").href = withProject("/guidelines");
  $("submit").addEventListener("click", submit);
  $("skip").addEventListener("click", skip);
  $("refresh").addEventListener("click", loadNext);
  $("logout").addEventListener("click", logout);
  $("help-btn").addEventListener("click", () => ($("help").hidden = false));
  $("help-close").addEventListener("click", () => ($("help").hidden = true));
  $("cancel-edit").addEventListener("click", () => (location.href = withProject("/history")));
  document.addEventListener("keydown", onKey);
  try {
    await (editing ? loadEdit() : loadNext());
  } catch (err) {
    toast(err.message, "error");
  }
  document.body.dataset.ready = "1"; // lets browser tests wait for the first item
}

document.addEventListener("DOMContentLoaded", start);

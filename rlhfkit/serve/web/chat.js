// The chat page: streams answers from /v1/chat/completions and sends feedback to /v1/feedback.
// Model text is only ever set with textContent (never as HTML), and the page's CSP allows no inline script.
"use strict";

const $ = (id) => document.getElementById(id);
const FLAGS = ["harmful", "untrue", "unhelpful", "other"];

function randomId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// A stable id per browser: the server assigns A/B arms by it, so one person always meets the same arm.
const USER = localStorage.getItem("rlhfkit-user") || "web-" + randomId();
localStorage.setItem("rlhfkit-user", USER);
$("who").textContent = "you are " + USER.slice(0, 12);

let history = []; // the conversation sent with each request: [{role, content}]

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function status(message, isError) {
  $("status").textContent = message;
  $("status").className = isError ? "error" : "muted";
}

function scrollDown() {
  window.scrollTo(0, document.body.scrollHeight);
}

// One answer, streamed into `bubble`; resolves to {id, text} once the server has stored it.
async function complete(messages, bubble, regenerateOf) {
  const body = { model: $("model").value.trim(), messages, stream: true, user: USER };
  if (regenerateOf) body.regenerate_of = regenerateOf;
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) {
    let message = "HTTP " + response.status;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", text = "", id = null, finished = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 2);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") { finished = true; continue; }
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      id = chunk.id;
      const delta = chunk.choices[0].delta.content;
      if (delta) {
        text += delta;
        bubble.textContent = text;
        scrollDown();
      }
    }
  }
  if (!finished) throw new Error("the answer was cut off");
  return { id, text };
}

// Feedback with one idempotency key, retried on a network error or a 5xx: stored once however often it is sent.
async function sendFeedback(payload) {
  const key = randomId();
  for (let attempt = 0; attempt < 4; attempt++) {
    try {
      const response = await fetch("/v1/feedback", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Idempotency-Key": key },
        body: JSON.stringify({ ...payload, user: USER }),
      });
      if (response.ok) return true;
      if (response.status < 500) {
        let message = "HTTP " + response.status;
        try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
        status("feedback refused: " + message, true);
        return false;
      }
    } catch (e) { /* network error: retry with the same key */ }
    await new Promise((r) => setTimeout(r, 300 * (attempt + 1)));
  }
  status("feedback could not be sent; try again", true);
  return false;
}

function feedbackBar(answer, turn) {
  const bar = el("div", "bar");
  const note = el("span", "note");
  const thumb = (up) => {
    const button = el("button", "", up ? "▲ Good" : "▼ Bad");
    button.setAttribute("aria-label", up ? "good answer" : "bad answer");
    button.dataset.testid = up ? "thumbs-up" : "thumbs-down";
    button.addEventListener("click", async () => {
      if (await sendFeedback({ response_id: answer.id, kind: "thumbs", value: up })) {
        bar.querySelectorAll("[data-testid^=thumbs]").forEach((b) => b.classList.remove("on"));
        button.classList.add("on");
        note.textContent = "thanks";
      }
    });
    return button;
  };
  bar.append(thumb(true), thumb(false));
  const rate = el("span", "muted", "rate:");
  bar.append(rate);
  for (let r = 1; r <= 5; r++) {
    const button = el("button", "", String(r));
    button.dataset.testid = "rate-" + r;
    button.setAttribute("aria-label", "rate " + r + " of 5");
    button.addEventListener("click", async () => {
      if (await sendFeedback({ response_id: answer.id, kind: "rating", value: r, scale: 5 })) {
        bar.querySelectorAll("[data-testid^=rate-]").forEach((b) => b.classList.toggle("on", b === button));
        note.textContent = "thanks";
      }
    });
    bar.append(button);
  }
  const flag = el("select");
  flag.dataset.testid = "flag";
  flag.setAttribute("aria-label", "flag this answer");
  flag.append(el("option", "", "flag…"));
  FLAGS.forEach((f) => flag.append(el("option", "", f)));
  flag.addEventListener("change", async () => {
    if (flag.selectedIndex === 0) return;
    if (await sendFeedback({ response_id: answer.id, kind: "flag", value: flag.value })) note.textContent = "flagged " + flag.value;
  });
  bar.append(flag);
  if (turn) {
    const again = el("button", "", "Regenerate");
    again.dataset.testid = "regenerate";
    again.addEventListener("click", () => regenerate(turn, answer, again));
    bar.append(again);
  }
  bar.append(note);
  return bar;
}

// Regenerate: a second answer beside the first, each with its own buttons; the user says which they prefer, and
// the preferred one becomes the conversation's answer.
async function regenerate(turn, first, button) {
  button.disabled = true;
  const firstBox = turn.node.querySelector(".bubble");
  const firstBar = turn.node.querySelector(".bar");
  const left = el("div", "column");
  const right = el("div", "column");
  const secondBox = el("div", "bubble", "…");
  left.append(firstBox, firstBar);
  right.append(secondBox);
  const pair = el("div", "alternatives");
  pair.append(left, right);
  turn.node.append(pair);
  let second;
  try {
    second = await complete(turn.messages, secondBox, first.id);
  } catch (e) {
    secondBox.textContent = "error: " + e.message;
    secondBox.classList.add("error");
    return;
  }
  right.append(feedbackBar(second, null));
  const buttons = [];
  const prefer = (chosen, other, box, column, testid) => {
    const b = el("button", "prefer", "Prefer this one");
    b.dataset.testid = testid;
    b.addEventListener("click", async () => {
      if (await sendFeedback({ response_id: chosen.id, kind: "preference", other_response_id: other.id })) {
        [firstBox, secondBox].forEach((x) => x.classList.toggle("chosen", x === box));
        history[turn.index] = { role: "assistant", content: chosen.text };
        buttons.forEach((x) => { x.disabled = true; });
        status("preference saved");
      }
    });
    buttons.push(b);
    column.append(b);
  };
  prefer(first, second, firstBox, left, "prefer-first");
  prefer(second, first, secondBox, right, "prefer-second");
}

async function ask(event) {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text) return;
  $("prompt").value = "";
  $("send").disabled = true;
  status("");
  history.push({ role: "user", content: text });
  const userTurn = el("div", "turn user");
  userTurn.append(el("div", "bubble", text));
  const answerTurn = el("div", "turn assistant");
  const bubble = el("div", "bubble", "…");
  answerTurn.append(bubble);
  $("log").append(userTurn, answerTurn);
  scrollDown();
  const messages = history.slice();
  try {
    const answer = await complete(messages, bubble, null);
    history.push({ role: "assistant", content: answer.text });
    answerTurn.dataset.responseId = answer.id;
    answerTurn.append(feedbackBar(answer, { node: answerTurn, messages, index: history.length - 1 }));
  } catch (e) {
    bubble.textContent = "error: " + e.message;
    bubble.classList.add("error");
    history.pop();
  } finally {
    $("send").disabled = false;
    $("prompt").focus();
  }
}

$("ask").addEventListener("submit", ask);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("ask").requestSubmit();
  }
});
$("new-chat").addEventListener("click", () => {
  history = [];
  $("log").replaceChildren();
  status("");
});

// A small, safe markdown renderer and a word-level diff. Both build DOM nodes from text; nothing here
// parses HTML. Supported markdown: fenced code blocks, inline code, **bold**, *italic*, headings,
// bullet and numbered lists, block quotes, paragraphs with line breaks. Links stay literal text.
"use strict";

// Underscore emphasis only at word edges (as in CommonMark), so snake_case and __dunder__ stay as typed.
const INLINE = /(`[^`\n]+`)|(\*\*[^*\n]+\*\*|(?<!\w)__[^_\n]+__(?!\w))|(\*[^*\s][^*\n]*\*|(?<!\w)_[^_\s][^_\n]*_(?!\w))/g;

function renderInline(text, parent) {
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) parent.append(document.createTextNode(text.slice(last, m.index)));
    const token = m[0];
    if (m[1]) parent.append(el("code", {}, token.slice(1, -1)));
    else if (m[2]) parent.append(el("strong", {}, token.slice(2, -2)));
    else parent.append(el("em", {}, token.slice(1, -1)));
    last = m.index + token.length;
  }
  if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
  return parent;
}

function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  const isList = (line) => /^\s*([-*+]|\d+[.)])\s+/.test(line);
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(/^\s*(```|~~~)\s*([\w+-]*)\s*$/);
    if (fence) {
      const body = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i++; // the closing fence (or the end of the text)
      const code = el("code", fence[2] ? { "data-lang": fence[2] } : {}, body.join("\n"));
      out.append(el("pre", {}, code));
      continue;
    }
    if (!line.trim()) { i++; continue; }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    if (heading) {
      out.append(renderInline(heading[2], el("h" + Math.min(6, heading[1].length + 2), { class: "md-h" })));
      i++;
      continue;
    }
    if (isList(line)) {
      const ordered = /^\s*\d/.test(line);
      const list = el(ordered ? "ol" : "ul");
      while (i < lines.length && isList(lines[i])) {
        list.append(renderInline(lines[i].replace(/^\s*([-*+]|\d+[.)])\s+/, ""), el("li")));
        i++;
      }
      out.append(list);
      continue;
    }
    if (/^\s*>/.test(line)) {
      const quote = [];
      while (i < lines.length && /^\s*>/.test(lines[i])) quote.push(lines[i++].replace(/^\s*>\s?/, ""));
      out.append(el("blockquote", {}, renderMarkdown(quote.join("\n"))));
      continue;
    }
    const para = el("p");
    let first = true;
    while (i < lines.length && lines[i].trim() && !isList(lines[i]) && !/^\s*(```|~~~|#{1,6}\s|>)/.test(lines[i])) {
      if (!first) para.append(el("br"));
      renderInline(lines[i++], para);
      first = false;
    }
    out.append(para);
  }
  return out;
}

// Word-level diff by longest common subsequence. Returns [fragmentA, fragmentB] where words only in
// A are <del> and words only in B are <ins>. Whitespace tokens are kept so the text reads normally.
const DIFF_LIMIT = 4e6; // cells of the LCS table; beyond this the diff would freeze the tab

function wordDiff(a, b) {
  const ta = String(a).split(/(\s+)/).filter((t) => t.length);
  const tb = String(b).split(/(\s+)/).filter((t) => t.length);
  if (ta.length * tb.length > DIFF_LIMIT) return null;
  const n = ta.length, m = tb.length;
  const table = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--)
    for (let j = m - 1; j >= 0; j--)
      table[i][j] = ta[i] === tb[j] ? table[i + 1][j + 1] + 1 : Math.max(table[i + 1][j], table[i][j + 1]);
  const fa = document.createDocumentFragment(), fb = document.createDocumentFragment();
  let i = 0, j = 0;
  const same = (t) => document.createTextNode(t);
  while (i < n && j < m) {
    if (ta[i] === tb[j]) { fa.append(same(ta[i++])); fb.append(same(tb[j++])); }
    else if (table[i + 1][j] >= table[i][j + 1]) fa.append(mark("del", ta[i++]));
    else fb.append(mark("ins", tb[j++]));
  }
  while (i < n) fa.append(mark("del", ta[i++]));
  while (j < m) fb.append(mark("ins", tb[j++]));
  return [fa, fb];
}

function mark(tag, token) {
  return /^\s+$/.test(token) ? document.createTextNode(token) : el(tag, {}, token);
}

// A conversation as chat bubbles: one per message, its role as a caption, its text as markdown.
function renderChat(messages) {
  const names = { system: "System", user: "User", assistant: "Assistant", tool: "Tool" };
  return el("div", { class: "chat" }, messages.map((m) =>
    el("div", { class: `bubble ${m.role}`, "data-role": m.role },
      el("div", { class: "bubble-role" }, names[m.role] || m.role),
      el("div", { class: "md" }, renderMarkdown(m.content)))));
}

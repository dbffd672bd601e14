// A project's guidelines (markdown written by its admins), rendered with the same text-only
// markdown renderer as model output: nothing in them is ever run as HTML.
"use strict";

document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("logout").addEventListener("click", logout);
  fillNav(await api("GET", "/api/me"));
  await fillProjects();
  try {
    const project = await api("GET", `/api/projects/${encodeURIComponent(currentProject())}`);
    document.getElementById("title").textContent = project.title || project.name;
    document.getElementById("guidelines").replaceChildren(project.guidelines
      ? renderMarkdown(project.guidelines)
      : el("p", { class: "muted" }, "This project has no guidelines yet. An admin adds them on the dashboard."));
  } catch (err) {
    document.getElementById("guidelines").replaceChildren(el("p", { class: "error" }, err.message));
  }
  document.body.dataset.ready = "1";
});

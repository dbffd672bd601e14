"use strict";

// Where to go after logging in: only a path on this site. The server already refused other targets
// (it sends /login?next=<off-site> to plain /login); this parses the target as the browser will, so
// "/\\evil", "//evil", "/%09/evil" and the like can never leave the origin.
function destination() {
  const next = new URLSearchParams(location.search).get("next");
  if (!next || !next.startsWith("/") || /[\\\x00-\x1f]/.test(next)) return "/";
  try {
    const url = new URL(next, location.origin);
    return url.origin === location.origin ? url.pathname + url.search + url.hash : "/";
  } catch (err) {
    return "/";
  }
}

async function attempt(path, body) {
  const error = document.getElementById("error");
  error.textContent = "";
  try {
    await api("POST", path, body);
    location.href = destination();
  } catch (err) {
    error.textContent = err.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const token = new URLSearchParams(location.hash.slice(1)).get("invite");
  if (token) {
    document.getElementById("invite-box").open = true;
    document.getElementById("invite-token").value = token;
  }
  document.getElementById("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    attempt("/api/auth/login", {
      username: document.getElementById("username").value,
      password: document.getElementById("password").value,
    });
  });
  document.getElementById("invite-form").addEventListener("submit", (e) => {
    e.preventDefault();
    attempt("/api/auth/invite", {
      token: document.getElementById("invite-token").value.trim(),
      password: document.getElementById("new-password").value || null,
    });
  });
});

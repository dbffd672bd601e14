"use strict";

function destination() {
  const next = new URLSearchParams(location.search).get("next") || "/";
  return next.startsWith("/") && !next.startsWith("//") ? next : "/"; // no open redirects
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

// rrq-flow dashboard: refresh the main part every 2 s, and the dead-letter actions with their
// confirmation step. Everything inserted as HTML comes from the server's escaped templates;
// messages from JSON answers are set as text.
"use strict";
(function () {
  const main = document.getElementById("main");
  const flash = document.getElementById("flash");
  const confirmBox = document.getElementById("confirm");
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  let busy = false;
  let pending = null; // the action waiting for confirmation

  function paused() {
    return (
      document.hidden ||
      !confirmBox.hidden ||
      main.querySelector('input[type="checkbox"]:checked') !== null ||
      main.contains(document.activeElement) && document.activeElement.tagName === "SELECT"
    );
  }

  async function refresh(force) {
    if (busy || (!force && paused())) return;
    busy = true;
    try {
      const answer = await fetch(location.href, {
        headers: { "X-Fragment": "1" },
        credentials: "same-origin",
      });
      if (answer.ok) {
        main.innerHTML = await answer.text();
        const stamp = document.getElementById("refreshed");
        if (stamp) stamp.textContent = new Date().toLocaleTimeString();
        document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
      }
    } catch (err) {
      // the server is restarting or away: try again at the next tick
    } finally {
      busy = false;
    }
  }
  setInterval(refresh, 2000);

  function say(text, bad) {
    flash.textContent = text;
    flash.className = bad ? "bad" : "";
    flash.hidden = false;
  }

  async function post(action, body) {
    const answer = await fetch("/api/dlq/" + action, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    let data = {};
    try { data = await answer.json(); } catch (err) { data = {}; }
    if (!answer.ok) throw new Error(data.error || "refused (" + answer.status + ")");
    return data;
  }

  function describe(action, data) {
    const perQueue = action === "requeue" ? data.moved : data.purged;
    const parts = Object.entries(perQueue || {}).map(([q, v]) =>
      q + " " + (Array.isArray(v) ? v.length : v));
    return data.count + " dead job(s)" + (parts.length ? " (" + parts.join(", ") + ")" : "");
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (button) {
      const action = button.dataset.action;
      const body = {};
      if (button.dataset.scope === "selected") {
        body.ids = Array.from(main.querySelectorAll('input[name="job"]:checked'), (b) => b.value);
        if (!body.ids.length) { say("select jobs first", true); return; }
      } else {
        body.all = true;
        const q = button.closest("[data-queue-filter]");
        if (q && q.dataset.queueFilter) body.queue = q.dataset.queueFilter;
      }
      try {
        const preview = await post(action, { ...body, dry_run: true });
        pending = { action, body };
        const verb = action === "requeue" ? "Requeue" : "Delete for good";
        document.getElementById("confirm-text").textContent =
          verb + " " + describe(action, preview) + "?";
        confirmBox.hidden = false;
        document.getElementById("confirm-yes").focus();
      } catch (err) {
        say(err.message, true);
      }
      return;
    }
    if (event.target.id === "confirm-no") {
      pending = null;
      confirmBox.hidden = true;
      return;
    }
    if (event.target.id === "confirm-yes" && pending) {
      const { action, body } = pending;
      pending = null;
      confirmBox.hidden = true;
      try {
        const done = await post(action, body);
        say((action === "requeue" ? "requeued " : "deleted ") + describe(action, done), false);
      } catch (err) {
        say(err.message, true);
      }
      refresh(true);
    }
  });

  document.addEventListener("change", (event) => {
    if (event.target.id === "select-all") {
      for (const box of main.querySelectorAll('input[name="job"]')) box.checked = event.target.checked;
    }
  });
})();

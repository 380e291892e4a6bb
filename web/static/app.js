// backup-manager live updates: one WebSocket that replays and tails the event log.
// It applies progress to the bars in place and asks htmx to re-fetch the fragments an
// event touches; it never builds page HTML itself. Without it the pages still work.
(function () {
  "use strict";

  var body = document.body;
  var lastSeq = Number(body.dataset.seq || 0);
  var wsPath = body.dataset.ws || "/ws";
  var eventsPath = body.dataset.events || "/api/events";
  var socket = null;
  var failures = 0; // consecutive connection attempts that did not open or soon died
  var reconnectTimer = null;
  var pollTimer = null;
  var everOpened = false;
  var pending = {};
  var flushTimer = null;
  var MAX_LOG_LINES = 1000;
  var LEVELS = { DEBUG: 10, INFO: 20, WARNING: 30, ERROR: 40, CRITICAL: 50 };

  // Which htmx triggers (listened to by fragments as `bm-... from:body`) an event touches:
  // the server renders the map from the event classes (events/types.py `topics`) into
  // <body data-topics>. Checkpoints touch nothing shown (progress comes on its own), so
  // they refresh nothing: refreshing every few seconds would also take keyboard focus
  // away from the buttons. A type this page does not know refreshes nothing either.
  var TOPICS = (function () {
    try { return JSON.parse(body.dataset.topics || "{}"); } catch (e) { return {}; }
  })();
  function topicsOf(type) {
    return Object.prototype.hasOwnProperty.call(TOPICS, type) ? TOPICS[type] : [];
  }

  var connection = ["connecting", "Connecting…"];

  function setConnection(state, label) {
    connection = [state, label];
    var el = document.getElementById("conn");
    if (!el) return;
    el.dataset.state = state;
    var text = el.querySelector("[data-label]");
    if (text) text.textContent = label;
    var dot = el.querySelector("[data-dot]");
    if (dot) {
      dot.className = "h-2 w-2 rounded-full " + ({
        live: "bg-emerald-500", polling: "bg-amber-500", offline: "bg-red-500"
      }[state] || "bg-slate-400");
    }
  }

  function nudge(topics) {
    topics.forEach(function (t) { pending[t] = true; });
    if (flushTimer) return;
    // Several events in one burst refresh each fragment once.
    flushTimer = setTimeout(function () {
      flushTimer = null;
      var names = Object.keys(pending);
      pending = {};
      if (window.htmx) names.forEach(function (name) { window.htmx.trigger(document.body, name); });
    }, 50);
  }

  function onStored(ev) {
    if (typeof ev.seq !== "number" || ev.seq <= lastSeq) return;
    lastSeq = ev.seq;
    document.querySelectorAll("[data-seq-label]").forEach(function (el) { el.textContent = String(lastSeq); });
    var topics = topicsOf(ev.type || "");
    // A job's own page listens to `bm-runs-<job id>` so other jobs' runs leave it alone.
    nudge(topics.concat(topics.map(function (t) { return t + "-" + ev.stream; })));
  }

  // --- progress ------------------------------------------------------------------
  function filesize(n) {
    if (n === null || n === undefined) return "—";
    var units = ["B", "kB", "MB", "GB", "TB"];
    var i = 0;
    while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return i === 0 ? Math.round(n) + " B" : n.toFixed(1) + " " + units[i];
  }

  function duration(s) {
    s = Math.max(0, Math.floor(s));
    if (s < 60) return s + " s";
    var m = Math.floor(s / 60), sec = s % 60;
    if (m < 60) return sec ? m + " min " + sec + " s" : m + " min";
    var h = Math.floor(m / 60);
    m = m % 60;
    if (h < 48) return m ? h + " h " + m + " min" : h + " h";
    return Math.floor(h / 24) + " days";
  }

  function setText(root, field, text) {
    var el = root.querySelector('[data-f="' + field + '"]');
    if (el && el.textContent !== text) el.textContent = text;
  }

  function applyProgress(root, p) {
    var counting = p.counting || !p.bytes_total;
    var pct = counting ? 0 : Math.max(0, Math.min(100, 100 * p.bytes_done / p.bytes_total));
    var bar = root.querySelector('[data-f="bar"]');
    if (bar) {
      bar.dataset.counting = counting ? "true" : "false";
      if (counting) bar.removeAttribute("aria-valuenow");
      else bar.setAttribute("aria-valuenow", String(Math.round(pct)));
      var fill = bar.firstElementChild;
      if (fill) fill.style.width = (counting ? 33 : pct) + "%";
    }
    setText(root, "phase", p.phase || "");
    setText(root, "bytes", filesize(p.bytes_done) + (counting ? " (counting…)" : " of " + filesize(p.bytes_total)));
    setText(root, "files", p.files_done + (counting || p.files_total === null ? "" : " of " + p.files_total) + " files");
    setText(root, "rate", p.rate ? filesize(p.rate) + "/s" : "");
    setText(root, "eta", p.eta !== null && p.eta !== undefined && !counting ? "ETA " + duration(p.eta) : "");
    setText(root, "current", p.current_file || "");
  }

  function onProgress(msg) {
    document.querySelectorAll('[data-run="' + msg.run_id + '"]').forEach(function (el) {
      applyProgress(el, msg);
    });
  }

  // --- live log tail -------------------------------------------------------------
  function onLog(msg) {
    var list = document.getElementById("log-tail");
    if (!list || list.dataset.live !== "on") return;
    var d = list.dataset;
    if (d.source && d.source !== msg.source) return;
    if (d.job && d.job !== (msg.job_id || "")) return;
    if (d.run && d.run !== (msg.run_id || "")) return;
    if (d.level && (LEVELS[msg.level] || 20) < (LEVELS[d.level] || 0)) return;
    if (d.q && String(msg.line).toLowerCase().indexOf(d.q.toLowerCase()) < 0) return;
    var li = document.createElement("li");
    li.className = "log-line log-" + (msg.level || "INFO");
    li.dataset.level = msg.level || "INFO";
    li.textContent = msg.line;
    var empty = list.querySelector("[data-empty]");
    if (empty) empty.remove();
    var newestFirst = d.order === "newest-first";
    if (newestFirst) list.insertBefore(li, list.firstChild); else list.appendChild(li);
    while (list.children.length > MAX_LOG_LINES) {
      list.removeChild(newestFirst ? list.lastElementChild : list.firstElementChild);
    }
  }

  // --- connection ------------------------------------------------------------------
  function onMessage(text) {
    var msg;
    try { msg = JSON.parse(text); } catch (e) { return; }
    if (typeof msg.seq === "number") return onStored(msg);
    if (msg.kind === "hello") {
      if (typeof msg.head === "number" && msg.head < lastSeq) {
        lastSeq = msg.head; // a different (restored or rebuilt) log: start over from its head
      }
      return;
    }
    if (msg.kind === "progress") return onProgress(msg);
    if (msg.kind === "log") return onLog(msg);
  }

  function wsUrl() {
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + location.host + wsPath + "?since=" + lastSeq;
  }

  function scheduleReconnect() {
    if (reconnectTimer) return;
    failures++;
    // Back off 0.5 s, 1 s, 2 s ... up to 15 s, with jitter so restarts are not stampedes.
    var delay = Math.min(15000, 500 * Math.pow(2, failures - 1)) * (0.75 + Math.random() / 2);
    if (failures >= 3) startPolling();
    setConnection(pollTimer ? "polling" : "offline", pollTimer ? "Polling" : "Reconnecting…");
    reconnectTimer = setTimeout(function () { reconnectTimer = null; connect(); }, delay);
  }

  function connect() {
    if (socket) return;
    var ws;
    try { ws = new WebSocket(wsUrl()); } catch (e) { scheduleReconnect(); return; }
    socket = ws;
    var opened = false;
    ws.onopen = function () {
      opened = true;
      var reconnected = everOpened;
      everOpened = true;
      failures = 0;
      stopPolling();
      setConnection("live", "Live");
      // The replay brings what changed while away; progress does not replay, so after a
      // reconnect the running fragments are fetched once. A first open needs nothing.
      if (reconnected) nudge(["bm-runs"]);
    };
    ws.onmessage = function (e) { onMessage(e.data); };
    ws.onclose = function () {
      socket = null;
      if (!opened) { scheduleReconnect(); return; }
      setConnection("offline", "Reconnecting…");
      scheduleReconnect();
    };
    ws.onerror = function () { /* onclose follows and reconnects */ };
  }

  // --- polling fallback ------------------------------------------------------------
  function poll() {
    fetch(eventsPath + "?since=" + lastSeq + "&limit=500", {
      headers: { Accept: "application/json" }, credentials: "same-origin"
    }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    }).then(function (data) {
      (data.events || []).forEach(onStored);
      if (pollTimer) setConnection("polling", "Polling");
    }).catch(function () {
      if (pollTimer) setConnection("offline", "Offline");
    });
  }

  function startPolling() {
    if (pollTimer) return;
    pollTimer = setInterval(poll, 3000);
    poll();
  }

  function stopPolling() {
    if (!pollTimer) return;
    clearInterval(pollTimer);
    pollTimer = null;
  }

  // A live refresh must not throw away a restore form someone is filling in.
  document.addEventListener("htmx:beforeSwap", function (e) {
    var target = e.detail.target;
    if (!target || !target.hasAttribute("data-keep-open-forms")) return;
    var busy = Array.prototype.some.call(target.querySelectorAll("details[open] input"), function (input) {
      return (input.type === "text" || input.type === "search" || !input.type) && input.value !== "";
    });
    if (busy || target.contains(document.activeElement) && document.activeElement.tagName === "INPUT") {
      e.detail.shouldSwap = false;
    }
  });

  document.addEventListener("htmx:afterSettle", function () {
    // A boosted page swap re-renders the header: show the socket's real state again.
    var el = document.getElementById("conn");
    if (el && el.dataset.state !== connection[0]) setConnection(connection[0], connection[1]);
    // After htmx swaps a refused form in, move focus to the summary of what to fix.
    var summary = document.getElementById("form-errors");
    if (summary && document.activeElement !== summary && !summary.dataset.focused) {
      summary.dataset.focused = "1";
      summary.focus();
    }
  });

  window.backupManager = {
    lastSeq: function () { return lastSeq; },
    connected: function () { return !!socket && socket.readyState === 1; }
  };

  var summary = document.getElementById("form-errors");
  if (summary) summary.focus(); // a refused form loaded as a whole page

  if ("WebSocket" in window) connect(); else startPolling();
})();

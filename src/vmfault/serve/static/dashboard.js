// vmfault serve: follows the server's event stream and swaps in the sections whose HTML
// changed. The server renders and escapes every fragment; this file only places them,
// keeps "12 s ago" and "in 3 min" current, and says when the stream is lost.
"use strict";

(function () {
  const body = document.body;
  const source = body.dataset.events;
  const connection = document.getElementById("connection");
  const title = document.title;
  let closed = false;

  function say(text, state) {
    if (!connection) return;
    connection.hidden = false;
    connection.textContent = text;
    connection.dataset.state = state;
  }

  function relative(seconds) {
    const s = Math.abs(seconds);
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return Math.round(s / 86400) + " days";
  }

  function tick() {
    const now = Date.now() / 1000;
    for (const el of document.querySelectorAll("time[data-since]")) {
      el.textContent = relative(now - Number(el.dataset.since)) + " ago";
    }
    for (const el of document.querySelectorAll("time[data-until]")) {
      const left = Number(el.dataset.until) - now;
      el.textContent = left > 0 ? "in " + relative(left) : "any moment now";
    }
    for (const el of document.querySelectorAll("td[data-quiet-after]")) {
      const quiet = now - Number(el.dataset.last) > Number(el.dataset.quietAfter);
      el.classList.toggle("quiet", quiet && el.textContent.startsWith("running"));
    }
  }

  function place(sections, hashes) {
    for (const [ident, html] of Object.entries(sections)) {
      const section = document.querySelector('section[data-section="' + CSS.escape(ident) + '"]');
      if (!section || section.dataset.hash === hashes[ident]) continue;
      const target = section.querySelector("[data-body]");
      if (!target) continue;
      target.innerHTML = html;
      section.dataset.hash = hashes[ident];
      section.hidden = html === "";
      const link = document.querySelector('a[data-toc="' + CSS.escape(ident) + '"]');
      if (link) link.hidden = html === "";
    }
  }

  function counts(campaigns) {
    const notice = document.getElementById("new-records");
    if (!notice) return;
    const first = Object.values(campaigns)[0];
    const since = first.done - Number(notice.dataset.done);
    if (since > 0) {
      notice.hidden = false;
      notice.textContent = "";
      const text = document.createTextNode(
        since + " more experiment" + (since === 1 ? "" : "s") + " recorded since this page loaded · ");
      const again = document.createElement("a");
      again.href = window.location.pathname + window.location.search;
      again.textContent = "show them";
      notice.append(text, again);
    }
  }

  function update(event) {
    const data = JSON.parse(event.data);
    place(data.sections, data.hashes);
    counts(data.campaigns);
    const campaigns = Object.values(data.campaigns);
    const states = campaigns.map(function (c) { return c.state; });
    if (campaigns.length === 1) {
      document.title = campaigns[0].done + "/" + campaigns[0].total + " · " + title;
    }
    body.dataset.revision = data.revision;
    say(states.includes("running") ? "live" : "up to date (" + states.join(", ") + ")", "live");
    tick();
  }

  if (source) {
    const stream = new EventSource(source);
    stream.addEventListener("update", update);
    stream.addEventListener("bye", function () {
      closed = true;
      stream.close();
      say("the server has stopped: this page shows the campaign as it last saw it", "closed");
    });
    stream.addEventListener("error", function () {
      if (!closed) say("connection lost, trying again", "lost");
    });
  }
  tick();
  window.setInterval(tick, 1000);
})();

// fleetwave dashboard: live updates. Pages are complete without this script; it only
// patches counters, progress bars, controls and the timeline in place from the page's
// server-sent event stream (one stream per page, at most about one message a second).
// It never builds HTML from strings: text goes in through textContent.
"use strict";
(function () {
  // Grid cells carry only their link: show the site id as a tooltip on hover.
  var grid = document.getElementById("grid");
  if (grid) {
    grid.addEventListener("mouseover", function (ev) {
      var a = ev.target;
      if (a && a.tagName === "A" && !a.title) a.title = a.getAttribute("href");
    });
  }
  var url = document.body && document.body.getAttribute("data-live-url");
  if (!url || !window.EventSource) {
    return;
  }
  var dot = document.getElementById("live-dot");

  function patchText(text) {
    var nodes = document.querySelectorAll("[data-live]");
    for (var i = 0; i < nodes.length; i++) {
      var key = nodes[i].getAttribute("data-live");
      if (Object.prototype.hasOwnProperty.call(text, key) && nodes[i].textContent !== text[key]) {
        nodes[i].textContent = text[key];
      }
    }
  }

  function patchBars(bars) {
    var svgs = document.querySelectorAll("svg[data-bar]");
    for (var i = 0; i < svgs.length; i++) {
      var segs = bars[svgs[i].getAttribute("data-bar")];
      if (!segs) continue;
      var total = 0;
      for (var j = 0; j < segs.length; j++) {
        total += segs[j].count;
        var rect = svgs[i].querySelector('rect[data-seg="' + segs[j].state + '"]');
        if (!rect) continue;
        rect.setAttribute("x", String(segs[j].x));
        rect.setAttribute("width", String(segs[j].width));
        var title = rect.querySelector("title");
        if (title) title.textContent = segs[j].label + ": " + segs[j].count;
      }
      svgs[i].setAttribute("aria-label", total + " sites");
    }
  }

  function patchControls(controls, approveWave) {
    var nodes = document.querySelectorAll("[data-control]");
    for (var i = 0; i < nodes.length; i++) {
      var action = nodes[i].getAttribute("data-control");
      nodes[i].hidden = controls.indexOf(action) < 0;
      if (action === "approve" && approveWave !== null && approveWave !== undefined) {
        var href = nodes[i].getAttribute("href").split("?")[0];
        nodes[i].setAttribute("href", href + "?wave=" + approveWave);
      }
    }
  }

  function patchTimeline(rows) {
    var list = document.querySelector('[data-live-list="timeline"]');
    if (!list) return;
    var frag = document.createDocumentFragment();
    for (var i = 0; i < rows.length; i++) {
      var r = rows[i];
      var li = document.createElement("li");
      var t = document.createElement("time");
      t.textContent = r.at;
      var k = document.createElement("span");
      k.className = "kind kind-" + r.kind;
      k.textContent = r.kind;
      li.appendChild(t);
      li.appendChild(document.createTextNode(" "));
      li.appendChild(k);
      if (r.wave) {
        var w = document.createElement("span");
        w.className = "muted";
        w.textContent = "wave " + r.wave;
        li.appendChild(document.createTextNode(" "));
        li.appendChild(w);
      }
      var why = document.createElement("span");
      why.className = "why";
      why.textContent = r.reason;
      li.appendChild(document.createTextNode(" "));
      li.appendChild(why);
      frag.appendChild(li);
    }
    while (list.firstChild) list.removeChild(list.firstChild);
    list.appendChild(frag);
  }

  var source = new EventSource(url);
  source.addEventListener("open", function () {
    if (dot) dot.classList.add("on");
  });
  source.addEventListener("error", function () {
    if (dot) dot.classList.remove("on");
  });
  source.addEventListener("update", function (ev) {
    var data;
    try {
      data = JSON.parse(ev.data);
    } catch (e) {
      return;
    }
    var shape = document.body.getAttribute("data-shape");
    if (shape !== null && data.shape !== undefined && data.shape !== shape) {
      // The set of things on the page changed (a rollout started or ended).
      source.close();
      window.location.reload();
      return;
    }
    if (data.text) patchText(data.text);
    if (data.bars) patchBars(data.bars);
    if (data.controls) patchControls(data.controls, data.approve_wave);
    if (data.timeline) patchTimeline(data.timeline);
    document.body.setAttribute("data-live-seq", String(Number(document.body.getAttribute("data-live-seq") || "0") + 1));
  });
})();

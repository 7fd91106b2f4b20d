/* opsgate dashboard: live figures and charts.
 *
 * The page's <body data-poll="URL"> names its JSON document (opsgate.web.data). Every POLL_MS the
 * script fetches it and rewrites each <span data-field="a.b.0.c" data-format="kind">; the formatters
 * mirror opsgate/web/format.py exactly. Charts are drawn by the vendored uPlot library. No inline
 * script or style anywhere (the Content-Security-Policy allows 'self' only).
 */
(function () {
  "use strict";

  var POLL_MS = 5000;
  var MISSING = "\u2013";
  var charts = {};

  function pad(value, width) {
    var text = String(value);
    while (text.length < width) { text = "0" + text; }
    return text;
  }

  function usd(micro) {
    var n = BigInt(micro);
    var sign = n < 0n ? "-" : "";
    if (n < 0n) { n = -n; }
    return sign + "$" + (n / 1000000n).toString() + "." + pad((n % 1000000n).toString(), 6);
  }

  function ppmPct(ppm) {
    var hundredths = Math.floor(ppm / 100);
    return Math.floor(hundredths / 100) + "." + pad(hundredths % 100, 2) + " %";
  }

  function show(value, kind) {
    if (value === null || value === undefined) { return MISSING; }
    switch (kind) {
      case "pct": return Number(value).toFixed(2) + " %";
      case "ms": return Number(value).toFixed(3) + " ms";
      case "usd": return usd(value);
      case "ppm": return ppmPct(value);
      case "bool": return value ? "yes" : "no";
      default: return String(value);
    }
  }

  function lookup(doc, path) {
    var parts = path.split(".");
    for (var i = 0; i < parts.length; i++) {
      if (doc === null || typeof doc !== "object" || !(parts[i] in doc)) { return null; }
      doc = doc[parts[i]];
    }
    return doc;
  }

  function refreshFigures(doc) {
    var figures = document.querySelectorAll("[data-field]");
    for (var i = 0; i < figures.length; i++) {
      var el = figures[i];
      var text = show(lookup(doc, el.getAttribute("data-field")), el.getAttribute("data-format"));
      if (el.textContent !== text) { el.textContent = text; }
    }
  }

  function usdAxis(u, splits) {
    return splits.map(function (v) { return "$" + (v / 1e6).toFixed(2); });
  }

  var CHARTS = {
    errors: function (doc) {
      return { data: [doc.t, doc.errorRate],
               series: [{}, { label: "error rate %", stroke: "#c0392b", width: 2, fill: "rgba(192,57,43,0.08)" }] };
    },
    latency: function (doc) {
      return { data: [doc.t, doc.p50, doc.p95, doc.p99],
               series: [{}, { label: "p50 ms", stroke: "#2471a3", width: 2 },
                        { label: "p95 ms", stroke: "#d68910", width: 2 },
                        { label: "p99 ms", stroke: "#884ea0", width: 2 }] };
    },
    count: function (doc) {
      return { data: [doc.t, doc.count],
               series: [{}, { label: "calls", stroke: "#1e8449", fill: "rgba(30,132,73,0.25)",
                              paths: uPlot.paths.bars({ size: [0.7, 40] }) }] };
    },
    "cost-days": function (doc) {
      var start = Date.parse(doc.since) / 1000;
      var spent = {};
      (doc.by_day || []).forEach(function (d) { spent[d.key] = d.cost_micro_usd; });
      var days = [], costs = [];
      for (var i = 0; i < doc.days; i++) {
        var t = start + i * 86400;
        days.push(t);
        costs.push(spent[new Date(t * 1000).toISOString().slice(0, 10)] || 0);
      }
      return { data: [days, costs],
               series: [{}, { label: "spend (micro-USD)", stroke: "#1e8449", fill: "rgba(30,132,73,0.3)",
                              paths: uPlot.paths.bars({ size: [0.6, 60] }) }],
               axes: [{}, { values: usdAxis, size: 70 }] };
    }
  };

  function drawCharts(doc) {
    var boxes = document.querySelectorAll("[data-chart]");
    for (var i = 0; i < boxes.length; i++) {
      var box = boxes[i];
      var kind = box.getAttribute("data-chart");
      var spec = CHARTS[kind](doc);
      if (charts[kind]) {
        charts[kind].setData(spec.data);
        continue;
      }
      var opts = { width: Math.max(box.clientWidth, 300), height: 220, series: spec.series,
                   scales: { x: { time: true } }, axes: spec.axes || [{}, {}], legend: { live: true } };
      charts[kind] = new uPlot(opts, spec.data, box);
    }
  }

  function stamp(text) {
    var el = document.getElementById("updated");
    if (el) { el.textContent = text; }
  }

  function poll(url) {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (response) {
        if (response.status === 401) {
          window.location.assign("/dashboard/login?next=" + encodeURIComponent(window.location.pathname));
          return null;
        }
        if (!response.ok) {
          stamp("failed (HTTP " + response.status + "), retrying");
          return null;
        }
        return response.json();
      })
      .then(function (doc) {
        if (doc === null) { return; }
        refreshFigures(doc);
        drawCharts(doc);
        stamp(new Date().toISOString());
      })
      .catch(function () { stamp("unreachable, retrying"); });
  }

  function autoSubmit() {
    var form = document.getElementById("filters");
    if (!form) { return; }
    var selects = form.querySelectorAll("select");
    for (var i = 0; i < selects.length; i++) {
      selects[i].addEventListener("change", function () { form.submit(); });
    }
  }

  function resize() {
    Object.keys(charts).forEach(function (kind) {
      var box = document.querySelector('[data-chart="' + kind + '"]');
      charts[kind].setSize({ width: Math.max(box.clientWidth, 300), height: 220 });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    autoSubmit();
    var url = document.body.getAttribute("data-poll");
    if (!url) { return; }
    poll(url);
    window.setInterval(function () { poll(url); }, POLL_MS);
    window.addEventListener("resize", resize);
  });
})();
